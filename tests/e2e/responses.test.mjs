// The Responses API through the edge with the official openai SDK: create (whole and streamed,
// text and a function call), then retrieve / input_items / delete / cancel on the same id, which
// must reach the upstream key that created the response (the mock stores responses per key, and
// the launcher seeds two keys in rotation); previous_response_id chaining pinned to that key; an
// id is 404 for every other user; usage and cost recorded; `store: false` reaches the upstream;
// a background response streamed again from `starting_after` and billed exactly once, whichever
// calls see it finished; the Vercel AI SDK (whose default OpenAI provider calls /v1/responses).
// Answers are validated against the spec.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  addAnthropicProvider, addMockModel, addRoutedModel, loadSpec, openaiClient, sleep, specPath, startSuite,
  waitFor,
} from './harness.mjs';

const MODEL = 'gpt-4o-mini';
// A background response of this model runs for 4 x 750 ms in the mock before it completes.
const SLOW_MODEL = 'mock-chunks-4-delay-750';
const today = () => new Date().toISOString().slice(0, 10);

describe('the Responses API through the edge', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;
  let spec;
  let other; // a client of another user

  before(async () => {
    suite = await startSuite();
    ({ default: OpenAI } = await import('openai'));
    client = await openaiClient(suite);
    spec = await loadSpec();
    const user = (await suite.ctlJson(['auth', 'create-user', '--name=responses-other'])).user.id;
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, '--name=other']);
    other = await openaiClient(suite, { apiKey: key });
    await addMockModel(suite, SLOW_MODEL);
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  function conforms(t, name, value) {
    if (!spec) { t.diagnostic(`spec validation skipped: ${specPath} not found`); return; }
    const errors = spec.validate(name, value);
    assert.deepEqual(errors, [], `${name} does not match the OpenAI spec:\n${JSON.stringify(value).slice(0, 2000)}`);
  }

  const isNotFound = (err) => {
    assert.ok(err instanceof OpenAI.NotFoundError, `${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 404);
    assert.equal(err.error?.type, 'invalid_request_error');
    assert.equal(err.code, 'not_found');
    return true;
  };

  // A user with an account and money, its client, and its usage row of `model` for today.
  async function billedUser(name) {
    const user = (await suite.ctlJson(['auth', 'create-user', `--name=${name}`])).user.id;
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, `--name=${name}`]);
    await suite.ctl(['billing', 'create-account', `--user-id=${user}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${user}`, '--amount-micros=5000000']);
    const report = async (model = MODEL) => {
      const r = await suite.ctlJson(['billing', 'usage-report', `--from-day=${today()}`, `--to-day=${today()}`,
        '--group-by=model', `--user-id=${user}`]);
      return (r.rows ?? []).find((row) => row.model === model);
    };
    return { user, key, client: await openaiClient(suite, { apiKey: key }), report };
  }
  // gpt-4o-mini's seeded prices (micro-units per million tokens): input 150000, cached 75000, output 600000.
  const costOf = (u) => {
    const cached = u.input_tokens_details.cached_tokens;
    return Math.ceil(((u.input_tokens - cached) * 150000 + cached * 75000 + u.output_tokens * 600000) / 1e6);
  };
  // Waits for `requests` records in the row, then checks that no more arrive.
  async function settledRow(report, requests) {
    await waitFor(async () => {
      const r = await report();
      return r && Number(r.requests) >= requests ? r : false;
    }, { timeoutMs: 10_000, what: `${requests} usage records` });
    await sleep(500);
    const row = await report();
    assert.equal(Number(row.requests), requests);
    return row;
  }

  it('create, then retrieve, input_items and delete the same id (on the key that holds it)', { timeout: 30_000 }, async (t) => {
    const created = await client.responses.create({ model: MODEL, input: 'Say hello', instructions: 'Be brief.' });
    conforms(t, 'Response', created);
    assert.match(created.id, /^resp_tg/);
    assert.equal(created.status, 'completed');
    assert.equal(created.object, 'response');
    assert.ok(created.output_text.length > 0);
    assert.ok(created.usage.input_tokens > 0 && created.usage.output_tokens > 0);
    // The upstream got the budget the edge decided, and never sees a sealed id.
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/responses');
    assert.equal(last.body.max_output_tokens > 0, true);

    // Several times: the seeded keys rotate, and only the creating key's account has it.
    for (let i = 0; i < 3; i++) {
      const again = await client.responses.retrieve(created.id);
      conforms(t, 'Response', again);
      assert.equal(again.id, created.id);
      assert.equal(again.output_text, created.output_text);
    }
    const items = await client.responses.inputItems.list(created.id);
    const raw = await fetch(`${suite.baseURL}/responses/${created.id}/input_items?limit=5`,
      { headers: { authorization: `Bearer ${suite.demoKey}` } });
    assert.equal(raw.status, 200);
    conforms(t, 'ResponseItemList', await raw.json());
    assert.equal(items.data.length, 1);
    assert.equal(items.data[0].role, 'user');
    assert.equal(items.data[0].content[0].text, 'Say hello');
    const upstreamTarget = (await suite.mockLast()).target;
    assert.match(upstreamTarget, /^\/v1\/responses\/resp_[0-9a-f]+\/input_items\?limit=5$/); // the query as sent
    assert.doesNotMatch(upstreamTarget, /resp_tg/);

    const deleted = await client.responses.delete(created.id).withResponse();
    assert.equal(deleted.response.status, 200);
    // Now the upstream's own 404, naming the id as the client knows it.
    await assert.rejects(client.responses.retrieve(created.id), (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `${err?.constructor?.name}: ${err?.message}`);
      assert.match(err.message, new RegExp(created.id));
      return true;
    });
  });

  it('a streamed response: typed events in sequence, sealed ids, no [DONE]; then retrieved', { timeout: 30_000 }, async (t) => {
    const events = [];
    for await (const event of await client.responses.create({ model: MODEL, input: 'Stream please', stream: true })) {
      events.push(event);
      conforms(t, 'ResponseStreamEvent', event);
    }
    const types = events.map((e) => e.type);
    for (const type of ['response.created', 'response.in_progress', 'response.output_item.added',
      'response.content_part.added', 'response.output_text.delta', 'response.output_text.done',
      'response.content_part.done', 'response.output_item.done', 'response.completed']) {
      assert.ok(types.includes(type), `no ${type} in ${types}`);
    }
    assert.equal(types[0], 'response.created');
    assert.equal(types.at(-1), 'response.completed');
    events.forEach((e, i) => assert.equal(e.sequence_number, i));
    const done = events.at(-1).response;
    assert.match(done.id, /^resp_tg/);
    assert.equal(events[0].response.id, done.id);
    assert.ok(done.usage.output_tokens > 0);
    const text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
    assert.equal(text, done.output[0].content[0].text);
    const again = await client.responses.retrieve(done.id);
    assert.equal(again.id, done.id);
    assert.equal(again.output_text, text);

    // On the wire: event: lines, and the stream ends with response.completed, not [DONE].
    const raw = await fetch(`${suite.baseURL}/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${suite.demoKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, input: 'raw', stream: true }),
    });
    assert.equal(raw.status, 200);
    const body = await raw.text();
    assert.ok(body.startsWith('event: response.created\ndata: '), body.slice(0, 200));
    assert.ok(!body.includes('[DONE]'), 'a [DONE] in a Responses stream');
    assert.ok(body.trimEnd().split('\n\n').at(-1).startsWith('event: response.completed\n'));
  });

  it('a function tool call, whole and streamed', { timeout: 30_000 }, async (t) => {
    const tools = [{
      type: 'function', name: 'get_weather', description: 'weather', strict: false,
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    }];
    const r = await client.responses.create({ model: MODEL, input: 'Weather in Paris?', tools });
    conforms(t, 'Response', r);
    const call = r.output.find((o) => o.type === 'function_call');
    assert.ok(call, JSON.stringify(r.output));
    assert.equal(call.name, 'get_weather');
    assert.equal(typeof JSON.parse(call.arguments).city, 'string');
    // The tool's output continues the same response chain.
    const next = await client.responses.create({
      model: MODEL, previous_response_id: r.id, tools,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: 'sunny' }],
    });
    assert.match(next.output_text, /The tool returned: sunny/);

    const events = [];
    for await (const e of await client.responses.create({ model: MODEL, input: 'Weather in Rome?', tools, stream: true })) {
      events.push(e);
      conforms(t, 'ResponseStreamEvent', e);
    }
    const args = events.filter((e) => e.type === 'response.function_call_arguments.delta').map((e) => e.delta).join('');
    const argsDone = events.find((e) => e.type === 'response.function_call_arguments.done');
    assert.ok(argsDone, events.map((e) => e.type).join());
    assert.equal(argsDone.arguments, args);
    assert.equal(argsDone.name, 'get_weather');
  });

  it('previous_response_id chains on the key that holds the previous response', { timeout: 30_000 }, async (t) => {
    let previous = await client.responses.create({ model: MODEL, input: 'one' });
    // The seeded keys rotate: without the pin, every other call would reach the account that has
    // never seen the previous response (the mock answers 404 there).
    for (const input of ['two', 'three', 'four']) {
      const next = await client.responses.create({ model: MODEL, input, previous_response_id: previous.id });
      conforms(t, 'Response', next);
      assert.equal(next.previous_response_id, previous.id);
      assert.ok(next.usage.input_tokens_details.cached_tokens > 0, 'the earlier context was not cached');
      const upstream = (await suite.mockLast()).body.previous_response_id;
      assert.match(upstream, /^resp_[0-9a-f]+$/); // unsealed before it went upstream
      previous = next;
    }
    const items = await client.responses.inputItems.list(previous.id, { order: 'asc' });
    assert.ok(items.data.length >= 7, `${items.data.length} items`); // 4 inputs + 3 outputs before
  });

  it('an id is 404 for every other user, like an unknown or forged one', { timeout: 30_000 }, async () => {
    const mine = await client.responses.create({ model: MODEL, input: 'private' });
    const calls = (await suite.stats()).total;
    await assert.rejects(other.responses.retrieve(mine.id), isNotFound);
    await assert.rejects(other.responses.inputItems.list(mine.id), isNotFound);
    await assert.rejects(other.responses.delete(mine.id), isNotFound);
    await assert.rejects(other.responses.cancel(mine.id), isNotFound);
    await assert.rejects(other.responses.create({ model: MODEL, input: 'x', previous_response_id: mine.id }),
      (err) => isNotFound(err) && err.param === 'previous_response_id');
    assert.equal((await suite.stats()).total, calls, 'another user reached the upstream');
    // Forged and unknown ids get the very same answer.
    const forged = mine.id.slice(0, -2) + (mine.id.endsWith('AA') ? 'BB' : 'AA');
    await assert.rejects(client.responses.retrieve(forged), isNotFound);
    await assert.rejects(client.responses.retrieve('resp_0123456789abcdef'), isNotFound);
    // The owner still has it.
    assert.equal((await client.responses.retrieve(mine.id)).id, mine.id);
  });

  it('cancel reaches the same key: a background response is cancelled, another is refused', { timeout: 30_000 }, async (t) => {
    const bg = await client.responses.create({ model: SLOW_MODEL, input: 'later', background: true });
    conforms(t, 'Response', bg);
    assert.equal(bg.status, 'queued');
    assert.equal(bg.usage, undefined);
    const running = await client.responses.retrieve(bg.id);
    assert.equal(running.status, 'in_progress');
    const cancelled = await client.responses.cancel(bg.id);
    conforms(t, 'Response', cancelled);
    assert.equal(cancelled.id, bg.id);
    assert.equal(cancelled.status, 'cancelled');
    const fg = await client.responses.create({ model: MODEL, input: 'now' });
    await assert.rejects(client.responses.cancel(fg.id), (err) => {
      assert.equal(err.status, 400);
      return true;
    });
  });

  it('store: false reaches the upstream on /v1/responses (not stored there); chat completions still lose store', { timeout: 30_000 }, async (t) => {
    const created = await client.responses.create({ model: MODEL, input: 'forget me', store: false });
    conforms(t, 'Response', created);
    assert.equal(created.store, false);
    assert.equal((await suite.mockLast()).body.store, false);
    // Not stored upstream: OpenAI's (and the mock's) 404, under the id the client knows.
    await assert.rejects(client.responses.retrieve(created.id), (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `${err?.constructor?.name}: ${err?.message}`);
      assert.match(err.message, new RegExp(created.id));
      return true;
    });
    // edge.strip_fields (default store) still applies to chat completions.
    await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], store: true });
    const chat = await suite.mockLast();
    assert.equal(chat.target, '/v1/chat/completions');
    assert.equal('store' in chat.body, false);
  });

  it('a background response is streamed again from starting_after, on its key; others get 404', { timeout: 30_000 }, async (t) => {
    const bg = await client.responses.create({ model: SLOW_MODEL, input: 'stream it later', background: true });
    assert.equal(bg.status, 'queued');
    const calls = (await suite.stats()).total;
    await assert.rejects(other.responses.retrieve(bg.id, { stream: true }), isNotFound);
    const raw404 = await fetch(`${suite.baseURL}/responses/${bg.id}?stream=true`,
      { headers: { authorization: `Bearer ${(other.apiKey)}` } });
    assert.equal(raw404.status, 404);
    assert.equal((await suite.stats()).total, calls, 'another user reached the upstream');

    const events = [];
    for await (const e of await client.responses.retrieve(bg.id, { stream: true, starting_after: 1 })) {
      events.push(e);
      conforms(t, 'ResponseStreamEvent', e);
    }
    const upstreamTarget = (await suite.mockLast()).target;
    assert.match(upstreamTarget, /^\/v1\/responses\/resp_[0-9a-f]+\?stream=true&starting_after=1$/);
    assert.equal(events[0].sequence_number, 2, events.map((e) => e.type).join());
    events.forEach((e, i) => assert.equal(e.sequence_number, i + 2));
    const done = events.at(-1);
    assert.equal(done.type, 'response.completed');
    assert.equal(done.response.id, bg.id); // sealed as the client knows it
    assert.equal(done.response.background, true);
    const text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
    assert.equal(text, done.response.output[0].content[0].text);
    const again = await client.responses.retrieve(bg.id);
    conforms(t, 'Response', again);
    assert.equal(again.status, 'completed');
    assert.equal(again.output_text, text);

    // On the wire: SSE with event: lines and no [DONE]; all of it without starting_after.
    const raw = await fetch(`${suite.baseURL}/responses/${bg.id}?stream=true`,
      { headers: { authorization: `Bearer ${suite.demoKey}` } });
    assert.equal(raw.status, 200);
    assert.match(raw.headers.get('content-type'), /^text\/event-stream/);
    const body = await raw.text();
    assert.ok(body.startsWith('event: response.created\ndata: '), body.slice(0, 200));
    assert.ok(!body.includes('[DONE]'));
    assert.ok(!body.includes('"resp_0') && !/"id":"resp_[0-9a-f]/.test(body), 'an unsealed response id');

    // A response that was not created in the background cannot be streamed (the upstream's 400).
    const fg = await client.responses.create({ model: MODEL, input: 'not background' });
    await assert.rejects(client.responses.retrieve(fg.id, { stream: true }), (err) => {
      assert.equal(err.status, 400);
      assert.equal(err.param, 'stream');
      return true;
    });
  });

  it('a background response is billed once, whichever calls see it finished', { timeout: 40_000 }, async (t) => {
    const { client: billed, report } = await billedUser('responses-background');
    const bg = await billed.responses.create({ model: MODEL, input: 'bill me in the background', background: true });
    assert.equal(bg.status, 'queued');
    // The create alone: one record, no tokens.
    let row = await settledRow(report, 1);
    assert.equal(Number(row.prompt_tokens) + Number(row.completion_tokens), 0);
    assert.equal(Number(row.cost_micros), 0);

    // Seen finished four times: retrieved twice, streamed, cancelled (too late: it is completed).
    const done = await billed.responses.retrieve(bg.id);
    conforms(t, 'Response', done);
    assert.equal(done.status, 'completed');
    assert.ok(done.usage.input_tokens > 0 && done.usage.output_tokens > 0);
    await billed.responses.retrieve(bg.id);
    for await (const e of await billed.responses.retrieve(bg.id, { stream: true })) conforms(t, 'ResponseStreamEvent', e);
    const cancelled = await billed.responses.cancel(bg.id);
    conforms(t, 'Response', cancelled);
    assert.equal(cancelled.status, 'completed');
    // 1 create + 4 follow-ups at zero tokens + the response's own record, once.
    row = await settledRow(report, 6);
    assert.equal(Number(row.prompt_tokens), done.usage.input_tokens);
    assert.equal(Number(row.completion_tokens), done.usage.output_tokens);
    assert.equal(Number(row.cost_micros), costOf(done.usage));

    // Streamed in the background: its own stream carries the end, billed once with the retrieve after.
    let end;
    for await (const e of await billed.responses.create({ model: MODEL, input: 'stream in the background', background: true, stream: true })) {
      conforms(t, 'ResponseStreamEvent', e);
      if (e.type === 'response.created') assert.equal(e.response.status, 'queued');
      if (e.type === 'response.completed') end = e.response;
    }
    assert.ok(end?.usage?.output_tokens > 0);
    await billed.responses.retrieve(end.id);
    row = await settledRow(report, 9);
    assert.equal(Number(row.prompt_tokens), done.usage.input_tokens + end.usage.input_tokens);
    assert.equal(Number(row.completion_tokens), done.usage.output_tokens + end.usage.output_tokens);
    assert.equal(Number(row.cost_micros), costOf(done.usage) + costOf(end.usage));
  });

  it('the Vercel AI SDK (its OpenAI provider calls /v1/responses): generateText and streamText, usage recorded', { timeout: 40_000 }, async () => {
    const { generateText, streamText } = await import('ai');
    const { createOpenAI } = await import('@ai-sdk/openai');
    const { key, report } = await billedUser('responses-vercel');
    const openai = createOpenAI({ baseURL: suite.baseURL, apiKey: key });
    const generated = await generateText({ model: openai(MODEL), prompt: 'Say something' });
    assert.ok(generated.text.length > 0);
    const first = await suite.mockLast();
    assert.equal(first.target, '/v1/responses');
    assert.ok(generated.usage.inputTokens > 0 && generated.usage.outputTokens > 0, JSON.stringify(generated.usage));
    assert.match(generated.response.id, /^resp_tg/);

    const streamed = streamText({ model: openai(MODEL), prompt: 'Stream something' });
    let text = '';
    for await (const piece of streamed.textStream) text += piece;
    assert.ok(text.length > 0);
    const usage = await streamed.usage;
    assert.ok(usage.inputTokens > 0 && usage.outputTokens > 0, JSON.stringify(usage));
    assert.equal((await suite.mockLast()).body.stream, true);

    const row = await settledRow(report, 2);
    assert.equal(Number(row.prompt_tokens), generated.usage.inputTokens + usage.inputTokens);
    assert.equal(Number(row.completion_tokens), generated.usage.outputTokens + usage.outputTokens);
    assert.ok(Number(row.cost_micros) > 0);
  });

  it('an Anthropic-routed model cannot serve /v1/responses: 400 before any upstream call', { timeout: 30_000 }, async () => {
    const providerId = await addAnthropicProvider(suite, 'anth-responses', ['sk-ant-responses']);
    await addRoutedModel(suite, 'claude-responses', providerId);
    await waitFor(async () => {
      try {
        await client.responses.create({ model: 'claude-responses', input: 'hi' });
        return false;
      } catch (err) {
        return err.status === 400 ? err : false; // 404 until the edge's table has the model
      }
    }, { timeoutMs: 10_000, what: 'a 400 for the anthropic model' }).then((err) => {
      assert.equal(err.error?.type, 'invalid_request_error');
      assert.equal(err.param, 'model');
    });
  });

  it('usage and cost are recorded; follow-ups are recorded at zero tokens', { timeout: 40_000 }, async () => {
    const user = (await suite.ctlJson(['auth', 'create-user', '--name=responses-billed'])).user.id;
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, '--name=billed']);
    await suite.ctl(['billing', 'create-account', `--user-id=${user}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${user}`, '--amount-micros=5000000']);
    const billed = await openaiClient(suite, { apiKey: key });
    const whole = await billed.responses.create({ model: MODEL, input: 'bill me' });
    let streamed;
    for await (const e of await billed.responses.create({ model: MODEL, input: 'bill me too', stream: true }))
      if (e.type === 'response.completed') streamed = e.response;
    const chained = await billed.responses.create({ model: MODEL, input: 'more', previous_response_id: whole.id });
    await billed.responses.retrieve(whole.id);
    const answers = [whole, streamed, chained];
    const sum = (f) => answers.reduce((n, r) => n + f(r.usage), 0);
    const cost = answers.reduce((n, { usage: u }) => {
      const cached = u.input_tokens_details.cached_tokens;
      return n + Math.ceil(((u.input_tokens - cached) * 150000 + cached * 75000 + u.output_tokens * 600000) / 1e6);
    }, 0);
    const report = async () => {
      const r = await suite.ctlJson(['billing', 'usage-report', `--from-day=${today()}`, `--to-day=${today()}`,
        '--group-by=model', `--user-id=${user}`]);
      return (r.rows ?? []).find((row) => row.model === MODEL);
    };
    const row = await waitFor(async () => {
      const r = await report();
      return r && Number(r.requests) === 4 ? r : false;
    }, { timeoutMs: 10_000, what: 'four usage records' });
    await sleep(300);
    assert.equal(Number((await report()).requests), 4);
    assert.equal(Number(row.prompt_tokens), sum((u) => u.input_tokens));
    assert.equal(Number(row.completion_tokens), sum((u) => u.output_tokens));
    assert.equal(Number(row.cached_tokens), sum((u) => u.input_tokens_details.cached_tokens));
    assert.ok(Number(row.cached_tokens) > 0);
    assert.equal(Number(row.cost_micros), cost);
  });
});
