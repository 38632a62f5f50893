// Prepaid balances under hostile concurrency, with the openai SDK through the real suite (issue
// #15): a user with 1,000 micro-units and no credit sends 50 concurrent requests via an alias,
// without max_tokens, with n: 4, with 40 KB of tool call arguments, and with clients that
// disconnect at random points. In every case the balance never ends below minus the credit
// limit, and every request that reached the upstream has a usage record charged at least the
// prompt the upstream counted.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addMockModel, findSecretsInLogs, openaiClient, pool, sleep, startSuite, waitFor } from './harness.mjs';

// Micro-units per 1M tokens: 1 micro-unit per prompt token, 2 per completion token.
const INPUT = 1_000_000;
const OUTPUT = 2_000_000;
const BALANCE = 1_000;

describe('money: holds cover what a request can cost', { timeout: 600_000 }, () => {
  let suite;
  let OpenAI;
  const keys = [];
  let n = 0;

  before(async () => {
    suite = await startSuite();
    ({ default: OpenAI } = await import('openai'));
    // A model answering 300 words (300 completion tokens) unless max_tokens says fewer, priced,
    // with an alias (no price of its own) and a default budget of 400 completion tokens.
    for (const model of ['mock-size-300', 'mock-ttfb-300-chunks-20-delay-30']) {
      await addMockModel(suite, model);
      await suite.ctl(['billing', 'set-price', `--model=${model}`, `--input-micros-per-mtok=${INPUT}`,
        `--output-micros-per-mtok=${OUTPUT}`, `--cached-input-micros-per-mtok=${INPUT}`]);
    }
    await suite.ctl(['router', 'set-model-limits', '--name=mock-size-300', '--max-output-tokens=1000',
      '--default-max-tokens=400']);
    await suite.ctl(['router', 'set-alias', '--alias=cheap-looking', '--model=mock-size-300']);
    await sleep(1500); // edge.routing_refresh: the edges' tables have the catalogue
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  /** A user with `balance` micro-units, no credit, and an openai client on a key of their own. */
  async function brokeUser(balance = BALANCE) {
    const name = `spender-${++n}`;
    const user = (await suite.ctlJson(['auth', 'create-user', `--name=${name}`])).user.id;
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, `--name=${name}`]);
    keys.push(key);
    await suite.ctl(['billing', 'create-account', `--user-id=${user}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${user}`, `--amount-micros=${balance}`]);
    return { user, client: await openaiClient(suite, { apiKey: key, timeout: 30_000 }) };
  }

  const account = async (user) => (await suite.ctlJson(['billing', 'get-balance', `--user-id=${user}`])).account;

  async function records(user) {
    const r = await suite.ctlJson(['billing', 'list-usage-records', `--user-id=${user}`, '--limit=1000']);
    return (r.records ?? []).map((x) => ({ ...x.record, cost_micros: x.cost_micros ?? 0 }));
  }

  /**
   * Once every hold of the user has ended (each admitted request's record is committed, or its
   * hold released), the books: balance, records and the upstream requests made for the user.
   */
  async function settle(user) {
    await waitFor(async () => Number((await account(user)).held_micros ?? 0) === 0,
      { timeoutMs: 20_000, intervalMs: 200, what: 'every hold of the user to end' });
    await sleep(300);
    return { account: await account(user), records: await records(user) };
  }

  /** Runs `count` requests `concurrency` at a time; returns {ok, refused} (refusals: 429 insufficient_quota). */
  async function storm(count, fn) {
    let ok = 0;
    let refused = 0;
    await pool(count, count, async (i) => {
      try {
        await fn(i);
        ok += 1;
      } catch (err) {
        if (err instanceof OpenAI.RateLimitError && err.code === 'insufficient_quota') refused += 1;
        else throw err;
      }
    });
    return { ok, refused };
  }

  function assertBooks(label, books, upstreamCalls) {
    const balance = Number(books.account.balance_micros);
    const credit = Number(books.account.credit_limit_micros ?? 0);
    assert.ok(balance >= -credit, `${label}: balance ${balance} below -credit ${-credit}`);
    const charged = books.records.reduce((s, r) => s + Number(r.cost_micros ?? 0), 0);
    assert.equal(BALANCE - balance, charged, `${label}: balance moved by exactly the recorded costs`);
    assert.ok(books.records.length >= upstreamCalls,
      `${label}: ${books.records.length} records for ${upstreamCalls} upstream requests`);
  }

  it('50 concurrent requests via an alias hold on the canonical model\'s price', { timeout: 90_000 }, async () => {
    const { user, client } = await brokeUser();
    const before = (await suite.stats()).total;
    const r = await storm(50, () => client.chat.completions.create(
      { model: 'cheap-looking', messages: [{ role: 'user', content: 'hi' }], max_tokens: 300 }));
    const calls = (await suite.stats()).total - before;
    assert.ok(r.ok >= 1 && r.ok <= 2, JSON.stringify(r)); // 600+ micro-units each of 1,000
    assert.equal(r.ok + r.refused, 50);
    const books = await settle(user);
    assertBooks('alias', books, calls);
    assert.equal(books.records.length, r.ok);
    for (const rec of books.records) assert.equal(rec.model, 'mock-size-300');
  });

  it('without max_tokens the model\'s default budget is held and sent upstream', { timeout: 90_000 }, async () => {
    const { user, client } = await brokeUser();
    const before = (await suite.stats()).total;
    const r = await storm(50, () => client.chat.completions.create(
      { model: 'mock-size-300', messages: [{ role: 'user', content: 'hi' }] }));
    const calls = (await suite.stats()).total - before;
    assert.equal(r.ok, 1, JSON.stringify(r)); // 2 x 400 + prompt: one fits in 1,000
    // The mock is an OpenAI-compatible provider: the budget goes as max_tokens.
    assert.equal((await suite.mockLast()).body.max_tokens, 400);
    assertBooks('no max_tokens', await settle(user), calls);
  });

  it('n: 4 holds four completions', { timeout: 90_000 }, async () => {
    const { user, client } = await brokeUser();
    const before = (await suite.stats()).total;
    const r = await storm(50, () => client.chat.completions.create(
      { model: 'mock-size-300', messages: [{ role: 'user', content: 'hi' }], max_tokens: 100, n: 4 }));
    const calls = (await suite.stats()).total - before;
    assert.ok(r.ok <= 1, JSON.stringify(r)); // 4 x 100 x 2 + prompt each
    assertBooks('n=4', await settle(user), calls);
  });

  it('40 KB of tool call arguments count in the prompt estimate', { timeout: 90_000 }, async () => {
    const { user, client } = await brokeUser();
    const messages = [
      { role: 'user', content: 'call it' },
      { role: 'assistant', content: null,
        tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: JSON.stringify({ x: 'y'.repeat(40_000) }) } }] },
      { role: 'tool', tool_call_id: 'c1', content: 'ok' },
      { role: 'user', content: 'and now?' },
    ];
    const before = (await suite.stats()).total;
    const r = await storm(50, () => client.chat.completions.create({ model: 'mock-size-300', messages, max_tokens: 5 }));
    const calls = (await suite.stats()).total - before;
    assert.equal(r.ok, 0, JSON.stringify(r)); // the upstream counts 10,000+ prompt tokens
    assert.equal(calls, 0, 'the upstream was called');
    const books = await settle(user);
    assertBooks('tool arguments', books, calls);
    assert.equal(Number(books.account.balance_micros), BALANCE);
  });

  it('absurd max_tokens values are a 400, never a wrapped estimate', { timeout: 30_000 }, async () => {
    const { user, client } = await brokeUser();
    for (const max of [-5, 0, 1.5, 1001, Number.MAX_SAFE_INTEGER]) {
      await assert.rejects(client.chat.completions.create(
        { model: 'mock-size-300', messages: [{ role: 'user', content: 'hi' }], max_tokens: max }),
      (err) => {
        assert.ok(err instanceof OpenAI.BadRequestError, `${max}: ${err?.constructor?.name} ${err?.message}`);
        assert.equal(err.param, 'max_tokens');
        return true;
      });
    }
    // int64's largest value, sent raw (the SDK would round it as a double).
    const res = await fetch(`${suite.baseURL}/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${keys.at(-1)}`, 'content-type': 'application/json' },
      body: '{"model":"mock-size-300","messages":[{"role":"user","content":"hi"}],"max_tokens":9223372036854775807}',
    });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.param, 'max_tokens');
    assert.deepEqual(await records(user), []);
  });

  it('clients that disconnect at random points are charged at least the prompt the upstream counted', { timeout: 120_000 }, async () => {
    // Enough for most of the 40 to be admitted at once (about 1,100 micro-units held each).
    const { user, client } = await brokeUser(40_000);
    // A 3 KB prompt and a 2 KB tool definition: the mock counts both (as the real API does), about
    // 1,300 tokens.
    const messages = [{ role: 'user', content: 'z'.repeat(3000) }];
    const tools = [{ type: 'function', function: { name: 'f', description: 'd'.repeat(2000), parameters: { type: 'object' } } }];
    const model = 'mock-ttfb-300-chunks-20-delay-30'; // head after 0.3 s, then 20 chunks 30 ms apart
    const body = { model, messages, tools, tool_choice: 'none', max_tokens: 40 };
    const full = await (await brokeUser(40_000)).client.chat.completions.create(body);
    const upstreamPrompt = full.usage.prompt_tokens;
    assert.ok(upstreamPrompt >= 1250, `${upstreamPrompt}`);

    const before = (await suite.stats()).total;
    let aborted = 0;
    let refused = 0;
    let completed = 0;
    await pool(40, 40, async (i) => {
      const ac = new AbortController();
      const delay = (i * 37) % 900; // 0 ms (before the answer) .. 0.9 s (mid-stream)
      const timer = setTimeout(() => ac.abort(), delay);
      try {
        const stream = i % 3 !== 0;
        const res = await client.chat.completions.create({ ...body, stream }, { signal: ac.signal });
        if (stream) for await (const chunk of res) void chunk;
        // The SDK ends a stream's iteration quietly when its signal aborts.
        if (ac.signal.aborted) aborted += 1;
        else completed += 1;
      } catch (err) {
        if (err instanceof OpenAI.APIUserAbortError || err?.name === 'AbortError') aborted += 1;
        else if (err instanceof OpenAI.RateLimitError) refused += 1;
        else throw err;
      } finally {
        clearTimeout(timer);
      }
    });
    assert.ok(aborted >= 10, `only ${aborted} requests were cut off (${completed} completed, ${refused} refused)`);
    await sleep(500); // let the edge notice the last hang-ups
    const calls = (await suite.stats()).total - before;
    const books = await settle(user);
    const balance = Number(books.account.balance_micros);
    assert.ok(balance >= 0, `balance ${balance}`);
    assert.equal(40_000 - balance, books.records.reduce((s, r) => s + Number(r.cost_micros ?? 0), 0));
    assert.ok(books.records.length >= calls, `${books.records.length} records for ${calls} upstream requests`);
    // Every request the upstream received (the mock counts a request once it has read it whole)
    // was charged at least the prompt it counted, whenever its client left: before the answer's
    // head, mid-stream, or after a complete non-streamed answer.
    const charged = books.records.filter((r) => Number(r.prompt_tokens) >= upstreamPrompt);
    const short = books.records.filter((r) => Number(r.prompt_tokens) < upstreamPrompt)
      .map((r) => `${r.status}/${r.client_disconnected ? 'left' : 'stayed'}/${r.prompt_tokens}`);
    assert.ok(charged.length >= calls,
      `${charged.length} records charged the full prompt for ${calls} upstream requests; short: ${short}`);
  });

  it('no API key in any log line', async () => {
    assert.deepEqual(findSecretsInLogs(suite, keys), []);
  });
});
