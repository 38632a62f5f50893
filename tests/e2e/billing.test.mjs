// Billing through the edge with the openai SDK: the launcher's demo account and prices, one usage
// record per request (seen through `tollgatectl billing usage-report`), the record of a client that
// disconnected mid-stream, a refused hold before the upstream is called (the mock's counter), and
// the user-facing endpoints (/v1/usage, /dashboard/billing/subscription and /usage).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addMockModel, findSecretsInLogs, openaiClient, sleep, startSuite, waitFor } from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'what does it cost?' }];
const today = () => new Date().toISOString().slice(0, 10);

describe('billing through the edge', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;
  let demoUser;
  const keys = []; // keys made here, for the log check

  before(async () => {
    suite = await startSuite();
    ({ default: OpenAI } = await import('openai'));
    client = await openaiClient(suite);
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    demoUser = users.find((u) => u.name === 'demo').id;
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  /** usage-report rows of one user for today, grouped by model: {model: row}. */
  async function usageByModel(userId) {
    const r = await suite.ctlJson(['billing', 'usage-report', `--from-day=${today()}`, `--to-day=${today()}`,
      '--group-by=model', `--user-id=${userId}`]);
    return Object.fromEntries((r.rows ?? []).map((row) => [row.model, row]));
  }
  const balance = async (userId) =>
    (await suite.ctlJson(['billing', 'get-balance', `--user-id=${userId}`])).account;

  it('the launcher gave the demo user a prepaid account and priced the models', async () => {
    const account = await balance(demoUser);
    assert.equal(Number(account.balance_micros), 10_000_000);
    const { prices } = await suite.ctlJson(['billing', 'list-prices', '--model=gpt-4o-mini']);
    assert.equal(prices.length, 1);
    assert.equal(Number(prices[0].input_micros_per_mtok), 150000);
    assert.equal(Number(prices[0].output_micros_per_mtok), 600000);
  });

  it('a request produces exactly one usage record, charged at the price', { timeout: 30_000 }, async () => {
    const before = await balance(demoUser);
    const r = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
    const { prompt_tokens: p, completion_tokens: o } = r.usage;
    const cost = Math.ceil((p * 150000 + o * 600000) / 1e6);
    const row = await waitFor(async () => (await usageByModel(demoUser))['gpt-4o-mini'],
      { timeoutMs: 10_000, what: 'the usage record' });
    await sleep(500); // a second record (a duplicate delivery) would show up by now
    const rows = await usageByModel(demoUser);
    assert.equal(Number(rows['gpt-4o-mini'].requests), 1, JSON.stringify(row));
    assert.equal(Number(rows['gpt-4o-mini'].prompt_tokens), p);
    assert.equal(Number(rows['gpt-4o-mini'].completion_tokens), o);
    assert.equal(Number(rows['gpt-4o-mini'].cost_micros), cost);
    const afterwards = await balance(demoUser);
    assert.equal(Number(afterwards.balance_micros), Number(before.balance_micros) - cost);
  });

  it('a client that disconnects mid-stream is billed for the tokens actually relayed', { timeout: 30_000 }, async () => {
    const model = 'mock-chunks-20-delay-200';
    await addMockModel(suite, model);
    const ac = new AbortController();
    let got = 0;
    let text = '';
    try {
      const stream = await client.chat.completions.create(
        { model, messages: MESSAGES, stream: true }, { signal: ac.signal });
      for await (const chunk of stream) {
        const c = chunk.choices[0]?.delta?.content;
        if (c) { text += c; if (++got === 3) ac.abort(); }
      }
    } catch (err) {
      if (!(err instanceof OpenAI.APIUserAbortError) && err?.name !== 'AbortError') throw err;
    }
    assert.equal(got, 3);
    const row = await waitFor(async () => (await usageByModel(demoUser))[model],
      { timeoutMs: 10_000, what: 'the disconnected request\'s record' });
    assert.equal(Number(row.requests), 1);
    // The upstream sent no usage: the edge counts ceil(code points / 4) of what it relayed, which
    // is at least what the client saw and far below the 20 words of the whole answer.
    const completion = Number(row.completion_tokens);
    assert.ok(completion >= Math.ceil([...text].length / 4), `completion_tokens ${completion} for "${text}"`);
    assert.ok(completion < 20, `completion_tokens ${completion}: more than was generated`);
  });

  async function get(pathAndQuery, key = suite.demoKey) {
    const res = await fetch(`${suite.edgeURL}${pathAndQuery}`, {
      headers: { authorization: `Bearer ${key}` }, signal: AbortSignal.timeout(10_000),
    });
    return { status: res.status, body: await res.json() };
  }

  it('GET /v1/usage answers the key\'s own usage per day', { timeout: 20_000 }, async () => {
    const { status, body } = await get(`/v1/usage?start_date=${today()}&end_date=${today()}`);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.object, 'usage');
    assert.equal(body.start_date, today());
    assert.equal(body.data.length, 1);
    assert.equal(body.data[0].date, today());
    const report = await usageByModel(demoUser);
    const requests = Object.values(report).reduce((n, r) => n + Number(r.requests), 0);
    const cost = Object.values(report).reduce((n, r) => n + Number(r.cost_micros), 0);
    assert.equal(body.total.requests, requests);
    assert.equal(body.total.cost_micros, cost);
    assert.equal(body.total.cost, cost / 1e6);
    // A key of its own sees none of the demo key's usage.
    const { api_key: other } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${demoUser}`, '--name=other']);
    keys.push(other);
    const mine = await get('/v1/usage', other);
    assert.equal(mine.status, 200);
    assert.equal(mine.body.total.requests, 0);
    assert.deepEqual(mine.body.data, []);
    const bad = await get('/v1/usage?start_date=2026-02-30');
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.type, 'invalid_request_error');
    assert.equal(bad.body.error.param, 'start_date');
    assert.equal((await get('/v1/usage', 'sk-tg-nope')).status, 401);
  });

  it('GET /dashboard/billing/subscription and /usage have the shapes chat front-ends expect', { timeout: 20_000 }, async () => {
    const sub = await get('/dashboard/billing/subscription');
    assert.equal(sub.status, 200, JSON.stringify(sub.body));
    assert.equal(sub.body.object, 'billing_subscription');
    assert.equal(sub.body.has_payment_method, true);
    assert.equal(sub.body.hard_limit_usd, 10);
    assert.equal(typeof sub.body.soft_limit_usd, 'number');
    assert.equal(typeof sub.body.system_hard_limit_usd, 'number');
    assert.equal(typeof sub.body.access_until, 'number');
    assert.deepEqual((await get('/v1/dashboard/billing/subscription')).body.object, 'billing_subscription');

    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    const usage = await get(`/dashboard/billing/usage?start_date=${today()}&end_date=${tomorrow}`);
    assert.equal(usage.status, 200, JSON.stringify(usage.body));
    assert.equal(usage.body.object, 'list');
    const account = await balance(demoUser);
    assert.equal(usage.body.total_usage, Number(account.total_cost_micros) / 1e4); // cents
    assert.equal(usage.body.daily_costs.length, 1);
    const day = usage.body.daily_costs[0];
    assert.equal(day.timestamp, Date.parse(`${today()}T00:00:00Z`) / 1000);
    assert.equal(day.line_items[0].cost, usage.body.total_usage);
    // Remaining, as the front-ends compute it, is the account's balance.
    assert.equal(Math.round((sub.body.hard_limit_usd - usage.body.total_usage / 100) * 1e6),
      Number(account.balance_micros));

    for (const q of ['', '?start_date=2026-01-01', '?start_date=2026-13-01&end_date=2026-12-01',
      '?start_date=2026-01-02&end_date=2026-01-01', '?start_date=2026-01-01&end_date=2026-06-01']) {
      const r = await get(`/dashboard/billing/usage${q}`);
      assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.type, 'invalid_request_error');
      assert.ok(r.body.error.message);
    }
  });

  it('insufficient balance is refused with 429 insufficient_quota before the upstream is called', { timeout: 30_000 }, async () => {
    const user = (await suite.ctlJson(['auth', 'create-user', '--name=broke'])).user.id;
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, '--name=broke']);
    keys.push(key);
    await suite.ctl(['billing', 'create-account', `--user-id=${user}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${user}`, '--amount-micros=1']);
    const broke = await openaiClient(suite, { apiKey: key });
    const calls = (await suite.stats()).total;
    await assert.rejects(broke.chat.completions.create({ model: 'gpt-4o', messages: MESSAGES, max_tokens: 1000 }),
      (err) => {
        assert.ok(err instanceof OpenAI.RateLimitError, `${err?.constructor?.name}: ${err?.message}`);
        assert.equal(err.status, 429);
        assert.equal(err.code, 'insufficient_quota');
        assert.equal(err.error?.type, 'insufficient_quota');
        return true;
      });
    assert.equal((await suite.stats()).total, calls, 'the upstream was called');
    // And nothing was billed for it.
    await sleep(300);
    assert.deepEqual(await usageByModel(user), {});
    assert.equal(Number((await balance(user)).balance_micros), 1);
  });

  it('a key that opted in keeps its bodies with secrets redacted; other keys keep none', { timeout: 30_000 }, async () => {
    const { api_key: key, key: made } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${demoUser}`,
      '--name=recorded', '--store-bodies=true']);
    keys.push(key);
    assert.equal(made.store_bodies, true);
    const recorded = await openaiClient(suite, { apiKey: key });
    // The mock answers a "tool" message with "The tool returned: <its content>", so a secret in
    // it comes back in the response body too.
    const secretIn = 'sk-proj-AbCdEfGhIjKlMnOpQrStUvWx';
    const secretOut = 'sk-ant-api03-ZyXwVuTsRqPoNmLkJiHg';
    const messages = [
      { role: 'user', content: `my key ${secretIn}, mine too ${key}, and password=hunter2xyz` },
      { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'c1', content: `found ${secretOut}` },
    ];
    const plain = await recorded.chat.completions.create({ model: 'gpt-4o-mini', messages });
    assert.match(plain.choices[0].message.content, /The tool returned/);
    let streamed = '';
    for await (const chunk of await recorded.chat.completions.create({ model: 'gpt-4o-mini', messages, stream: true }))
      streamed += chunk.choices[0]?.delta?.content ?? '';
    assert.match(streamed, /The tool returned/);
    await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }); // demo key: not kept

    const records = await waitFor(async () => {
      const r = await suite.ctlJson(['billing', 'list-usage-records', `--api-key-id=${made.id}`, '--include-bodies=true']);
      return (r.records ?? []).length >= 2 ? r.records : null;
    }, { timeoutMs: 10_000, what: "the recorded key's two usage records" });
    assert.equal(records.length, 2);
    for (const { record, has_bodies: has } of records) {
      assert.equal(has, true);
      const both = record.request_body + record.response_body;
      for (const secret of [secretIn, secretOut, key, 'hunter2xyz'])
        assert.ok(!both.includes(secret), `a secret was stored: ${secret.slice(0, 8)}...`);
      assert.match(record.request_body, /"model":"gpt-4o-mini"/);
      assert.match(record.request_body, /sk-proj-\*\*\*/);
      assert.match(record.request_body, /password=\*\*\*/);
      assert.match(record.response_body, /The tool returned: found sk-ant-\*\*\*/);
      // A stream is stored put back together, in the non-streamed shape (so a secret split over
      // chunks is whole when it is redacted).
      const response = JSON.parse(record.response_body);
      assert.equal(response.object, 'chat.completion');
      assert.match(response.choices[0].message.content, /^The tool returned: found sk-ant-\*\*\*/);
      assert.equal(record.bodies_truncated, false);
    }
    assert.deepEqual(records.map((r) => r.record.streamed).sort(), [false, true]);

    const { keys: demoKeys } = await suite.ctlJson(['auth', 'list-api-keys', `--user-id=${demoUser}`]);
    const demoKeyId = demoKeys.find((k) => k.name === 'demo').id;
    const mine = await suite.ctlJson(['billing', 'list-usage-records', `--api-key-id=${demoKeyId}`, '--include-bodies=true']);
    assert.ok(mine.records.length >= 1);
    for (const { record, has_bodies: has } of mine.records) {
      assert.equal(has, false);
      assert.equal(record.request_body, '');
    }
  });

  it('no API key, upstream secret or admin token in any log line', async () => {
    assert.deepEqual(findSecretsInLogs(suite, keys), []);
  });
});
