// Anthropic's Messages API in front of Tollgate (issue #11), end to end with @anthropic-ai/sdk:
// POST /v1/messages (whole and streamed, with tools) and /v1/messages/count_tokens, to an
// Anthropic-type upstream (passed through: the mock upstream's Anthropic mode) and to an
// OpenAI-type upstream (translated: the default mock provider), with the demo user's sk-tg- key
// as x-api-key or Authorization: Bearer; usage (cache reads included) recorded by billing; errors
// (authentication, validation, unknown model, a refused billing hold, upstream errors, an error
// event mid-stream, a wrong method, every key overloaded: 529 overloaded_error) in Anthropic's
// format.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  addAnthropicProvider, addMockModel, addRoutedModel, findSecretsInLogs, sleep, startSuite, waitFor,
} from './harness.mjs';

const SECRETS = ['ant-front-a', 'ant-front-b', 'ant-busy-a', 'ant-busy-b'];
const PARAMS = { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] };
const TOOLS = ['weather', 'forecast'].map((name) => ({ name, description: `the ${name}`, input_schema: PARAMS }));
const ASK = [{ role: 'user', content: 'What is the weather in Paris?' }];

describe('anthropic messages api in front', { timeout: 300_000 }, () => {
  let suite;
  let Anthropic;
  let client;
  let demoUser;

  before(async () => {
    suite = await startSuite();
    ({ default: Anthropic } = await import('@anthropic-ai/sdk'));
    const origin = suite.baseURL.replace(/\/v1$/, '');
    client = new Anthropic({ baseURL: origin, apiKey: suite.demoKey, maxRetries: 0, timeout: 20_000 });
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    demoUser = users.find((u) => u.name === 'demo').id;
    const provider = await addAnthropicProvider(suite, 'anthropic-front', SECRETS.slice(0, 2));
    // Its own keys, both overloaded in the test that needs them.
    const busy = await addAnthropicProvider(suite, 'anthropic-busy', SECRETS.slice(2));
    await addRoutedModel(suite, 'claude-front-busy', busy, 'claude-haiku-busy');
    await addRoutedModel(suite, 'claude-front', provider, 'claude-haiku-front');
    await addRoutedModel(suite, 'claude-front-tools', provider, 'mock-tools-2');
    await addRoutedModel(suite, 'claude-front-cache', provider, 'claude-cache-front');
    await addRoutedModel(suite, 'claude-front-midstream', provider, 'mock-midstream-4');
    await addRoutedModel(suite, 'claude-front-count', provider, 'claude-count-front');
    for (const m of ['mock-front', 'mock-front-stream', 'mock-front-tools', 'mock-front-400', 'mock-front-count',
      'mock-front-priced']) {
      await addMockModel(suite, m);
    }
    // Each prompt part at its own price: input, cache reads, cache writes (Anthropic's 1.25x).
    await suite.ctl(['billing', 'set-price', '--model=claude-front-cache', '--input-micros-per-mtok=1000000',
      '--cached-input-micros-per-mtok=100000', '--cache-write-micros-per-mtok=1250000',
      '--output-micros-per-mtok=2000000']);
    await suite.ctl(['billing', 'set-price', '--model=mock-front-priced', '--input-micros-per-mtok=1000000',
      '--output-micros-per-mtok=1000000']);
    await sleep(1500); // edge.routing_refresh: the edges' tables have the catalogue
  }, { timeout: 240_000 });

  after(async () => {
    if (suite) {
      const leaks = findSecretsInLogs(suite, SECRETS);
      await suite.down();
      assert.deepEqual(leaks, [], 'no upstream secret in any log');
    }
  }, { timeout: 120_000 });

  /** The demo user's usage records for one model, once `n` are there. */
  async function records(model, n = 1) {
    return waitFor(async () => {
      const r = await suite.ctlJson(['billing', 'list-usage-records', `--user-id=${demoUser}`, '--limit=1000']);
      const mine = (r.records ?? []).map((x) => x.record).filter((x) => x.model === model);
      return mine.length >= n ? mine : null;
    }, { timeoutMs: 10_000, what: `${n} usage record(s) of ${model}` });
  }

  /** A streamed create: the raw events, and tool inputs reassembled from input_json_delta. */
  async function streamEvents(params, options) {
    const stream = await client.messages.create({ ...params, stream: true }, options);
    const events = [];
    const blocks = new Map();
    for await (const ev of stream) {
      events.push(ev);
      if (ev.type === 'content_block_start') blocks.set(ev.index, { ...ev.content_block, json: '', text: '' });
      if (ev.type === 'content_block_delta') {
        const b = blocks.get(ev.index);
        assert.ok(b, `a delta for block ${ev.index} that never started`);
        if (ev.delta.type === 'input_json_delta') b.json += ev.delta.partial_json;
        if (ev.delta.type === 'text_delta') b.text += ev.delta.text;
      }
    }
    return { events, blocks: [...blocks.entries()].sort((a, b) => a[0] - b[0]).map(([, b]) => b) };
  }

  describe('to an OpenAI-type upstream (translated)', () => {
    it('whole: a message with text, end_turn, usage; the upstream got a chat completion', { timeout: 30_000 }, async () => {
      const r = await client.messages.create({
        model: 'mock-front', max_tokens: 300, system: 'Be brief.', messages: ASK, metadata: { user_id: 'u-front' },
      });
      assert.equal(r.type, 'message');
      assert.equal(r.role, 'assistant');
      assert.equal(r.model, 'mock-front');
      assert.equal(r.stop_reason, 'end_turn');
      assert.equal(r.content[0].type, 'text');
      assert.ok(r.content[0].text.length > 0);
      assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0, JSON.stringify(r.usage));
      const last = await suite.mockLast();
      assert.equal(last.target, '/v1/chat/completions');
      // The seeded mock provider is openai-compatible: the budget goes as max_tokens.
      assert.equal(last.body.max_tokens, 300);
      assert.deepEqual(last.body.messages[0], { role: 'system', content: 'Be brief.' });
      assert.equal(last.body.user, 'u-front');
      const [rec] = await records('mock-front');
      assert.equal(Number(rec.prompt_tokens), r.usage.input_tokens);
      assert.equal(Number(rec.completion_tokens), r.usage.output_tokens);
    });

    it('streamed text: Anthropic events in order; usage recorded', { timeout: 30_000 }, async () => {
      const { events, blocks } = await streamEvents({ model: 'mock-front-stream', max_tokens: 100, messages: ASK });
      const types = events.map((e) => e.type);
      assert.equal(types[0], 'message_start');
      assert.deepEqual(types.slice(-2), ['message_delta', 'message_stop']);
      assert.ok(types.includes('content_block_stop'));
      assert.equal(blocks.length, 1);
      assert.ok(blocks[0].text.length > 0);
      const delta = events.at(-2);
      assert.equal(delta.delta.stop_reason, 'end_turn');
      assert.ok(delta.usage.output_tokens > 0 && delta.usage.input_tokens > 0, JSON.stringify(delta.usage));
      const [rec] = await records('mock-front-stream');
      assert.equal(Number(rec.completion_tokens), delta.usage.output_tokens);
      assert.equal(Number(rec.prompt_tokens), delta.usage.input_tokens);
      assert.equal(rec.streamed, true);
    });

    it('tools, whole and streamed (MessageStream): tool_use whose input reassembles to JSON', { timeout: 30_000 }, async () => {
      const whole = await client.messages.create({ model: 'mock-front-tools', max_tokens: 200, messages: ASK, tools: TOOLS,
        tool_choice: { type: 'any' } });
      assert.equal(whole.stop_reason, 'tool_use');
      const use = whole.content.find((b) => b.type === 'tool_use');
      assert.equal(use.name, 'weather');
      assert.equal(typeof use.input.city, 'string');
      const last = await suite.mockLast();
      assert.equal(last.body.tool_choice, 'required');
      assert.equal(last.body.tools[0].function.name, 'weather');

      const { blocks, events } = await streamEvents({ model: 'mock-front-tools', max_tokens: 200, messages: ASK, tools: TOOLS });
      const tools = blocks.filter((b) => b.type === 'tool_use');
      assert.ok(tools.length >= 1);
      for (const t of tools) assert.equal(typeof JSON.parse(t.json).city, 'string');
      assert.equal(events.at(-2).delta.stop_reason, 'tool_use');

      // The SDK's own accumulator agrees.
      const final = await client.messages.stream({ model: 'mock-front-tools', max_tokens: 200, messages: ASK, tools: TOOLS })
        .finalMessage();
      assert.equal(final.stop_reason, 'tool_use');
      assert.equal(typeof final.content.find((b) => b.type === 'tool_use').input.city, 'string');
    });

    it('a tool result goes back as a tool message', { timeout: 30_000 }, async () => {
      const r = await client.messages.create({
        model: 'mock-front', max_tokens: 100, tools: TOOLS,
        messages: [...ASK,
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'weather', input: { city: 'Paris' } }] },
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'sunny and warm' }] }],
      });
      assert.match(r.content[0].text, /sunny and warm/);
      const last = await suite.mockLast();
      assert.deepEqual(last.body.messages.at(-1), { role: 'tool', tool_call_id: 'toolu_1', content: 'sunny and warm' });
      assert.equal(last.body.messages.at(-2).tool_calls[0].function.arguments, '{"city":"Paris"}');
    });

    it('an upstream error comes back in Anthropic form', { timeout: 30_000 }, async () => {
      await assert.rejects(client.messages.create({ model: 'mock-front-400', max_tokens: 10, messages: ASK }), (err) => {
        assert.ok(err instanceof Anthropic.BadRequestError, String(err));
        assert.equal(err.error?.type, 'error');
        assert.equal(err.error?.error?.type, 'invalid_request_error');
        return true;
      });
    });

    it('count_tokens: the edge answers an upper-bound estimate, no upstream call, billed zero', { timeout: 30_000 }, async () => {
      await suite.resetMock();
      const params = { model: 'mock-front-count', messages: ASK, system: 'Be brief.', tools: TOOLS };
      const r = await client.messages.countTokens(params);
      assert.ok(r.input_tokens > 0);
      assert.equal((await suite.stats()).total, 0, 'no upstream call');
      // Never below what a provider counts for the same prompt (the mock's Anthropic count).
      const exact = await client.messages.countTokens({ ...params, model: 'claude-front-count' });
      assert.ok(r.input_tokens >= exact.input_tokens, `${r.input_tokens} >= ${exact.input_tokens}`);
      const [rec] = await records('mock-front-count');
      assert.equal(Number(rec.prompt_tokens ?? 0), 0);
      assert.equal(Number(rec.completion_tokens ?? 0), 0);
    });
  });

  describe('to an Anthropic-type upstream (passed through)', () => {
    it('whole: only model replaced; anthropic-version and anthropic-beta forwarded; Bearer key works', { timeout: 30_000 }, async () => {
      const bearer = new Anthropic({ baseURL: suite.baseURL.replace(/\/v1$/, ''), apiKey: null, authToken: suite.demoKey,
        maxRetries: 0 });
      const r = await bearer.messages.create({ model: 'claude-front', max_tokens: 200, messages: ASK, top_k: 5 },
        { headers: { 'anthropic-beta': 'prompt-caching-2024-07-31' } });
      assert.equal(r.type, 'message');
      assert.equal(r.stop_reason, 'end_turn');
      const last = await suite.mockLast();
      assert.equal(last.target, '/v1/messages');
      assert.equal(last.body.model, 'claude-haiku-front');
      assert.equal(last.body.top_k, 5);
      assert.match(last.headers['anthropic-version'], /^\d{4}-\d{2}-\d{2}$/); // the SDK's, as sent
      assert.equal(last.headers['anthropic-beta'], 'prompt-caching-2024-07-31');
      assert.ok(SECRETS.includes(last.headers['x-api-key']));
      assert.equal(last.headers.authorization, undefined);
      const [rec] = await records('claude-front');
      assert.equal(Number(rec.prompt_tokens), r.usage.input_tokens);
      assert.equal(Number(rec.completion_tokens), r.usage.output_tokens);
    });

    it('streamed with parallel tools: events relayed, inputs reassemble to JSON', { timeout: 30_000 }, async () => {
      const { blocks, events } = await streamEvents({ model: 'claude-front-tools', max_tokens: 300, messages: ASK, tools: TOOLS });
      const tools = blocks.filter((b) => b.type === 'tool_use');
      assert.deepEqual(tools.map((t) => t.name), ['weather', 'forecast']);
      for (const t of tools) assert.equal(typeof JSON.parse(t.json).city, 'string');
      assert.equal(events.at(-1).type, 'message_stop');
      const [rec] = await records('claude-front-tools');
      assert.equal(Number(rec.completion_tokens), events.findLast((e) => e.type === 'message_delta').usage.output_tokens);
    });

    it('prompt cache reads and writes reach billing', { timeout: 30_000 }, async () => {
      const params = {
        model: 'claude-front-cache', max_tokens: 50, messages: ASK,
        system: [{ type: 'text', text: 'A long and stable system prompt. '.repeat(20), cache_control: { type: 'ephemeral' } }],
      };
      const first = await client.messages.create(params);
      assert.ok(first.usage.cache_creation_input_tokens > 0, JSON.stringify(first.usage));
      const { events } = await streamEvents(params);
      const start = events[0].message.usage;
      assert.ok(start.cache_read_input_tokens > 0, JSON.stringify(start));
      const recs = await records('claude-front-cache', 2);
      const total = (u) => u.input_tokens + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);
      const byPrompt = recs.map((x) => Number(x.prompt_tokens)).sort((a, b) => a - b);
      assert.deepEqual(byPrompt, [total(first.usage), total(start)].sort((a, b) => a - b));
      assert.deepEqual(recs.map((x) => Number(x.cached_tokens ?? 0)).sort((a, b) => a - b), [0, start.cache_read_input_tokens]);
      // Cache writes are recorded apart and billed at the cache-write price, reads at the cached price.
      const listed = (await suite.ctlJson(['billing', 'list-usage-records', `--user-id=${demoUser}`, '--limit=1000']))
        .records.filter((x) => x.record.model === 'claude-front-cache');
      const write = listed.find((x) => Number(x.record.cache_write_tokens ?? 0) > 0);
      assert.ok(write, JSON.stringify(listed));
      assert.equal(Number(write.record.cache_write_tokens), first.usage.cache_creation_input_tokens);
      for (const { record: r, cost_micros: cost } of listed) {
        const p = Number(r.prompt_tokens), c = Number(r.cached_tokens ?? 0), w = Number(r.cache_write_tokens ?? 0);
        const o = Number(r.completion_tokens);
        assert.equal(Number(cost), Math.ceil(((p - c - w) * 1_000_000 + c * 100_000 + w * 1_250_000 + o * 2_000_000) / 1e6),
          JSON.stringify(r));
      }
    });

    it('an error event mid-stream reaches the client as Anthropic error', { timeout: 30_000 }, async () => {
      await assert.rejects(streamEvents({ model: 'claude-front-midstream', max_tokens: 100, messages: ASK }), (err) => {
        assert.ok(err instanceof Anthropic.APIError, String(err));
        assert.match(String(err.message), /overloaded/i);
        return true;
      });
    });

    it('count_tokens passes through to the provider', { timeout: 30_000 }, async () => {
      const r = await client.messages.countTokens({ model: 'claude-front-count', messages: ASK });
      assert.ok(r.input_tokens > 0);
      const last = await suite.mockLast();
      assert.equal(last.target, '/v1/messages/count_tokens');
      assert.equal(last.body.model, 'claude-count-front');
    });
  });

  describe('errors in Anthropic form', () => {
    it('a bad key is authentication_error 401', { timeout: 30_000 }, async () => {
      const bad = new Anthropic({ baseURL: suite.baseURL.replace(/\/v1$/, ''), apiKey: 'sk-tg-nope', maxRetries: 0 });
      await assert.rejects(bad.messages.create({ model: 'claude-front', max_tokens: 10, messages: ASK }), (err) => {
        assert.ok(err instanceof Anthropic.AuthenticationError, String(err));
        assert.deepEqual(Object.keys(err.error), ['type', 'error']);
        assert.equal(err.error.error.type, 'authentication_error');
        return true;
      });
    });

    it('missing max_tokens is invalid_request_error 400; an unknown model not_found_error 404', { timeout: 30_000 }, async () => {
      const res = await fetch(`${suite.baseURL}/messages`, {
        method: 'POST', headers: { 'x-api-key': suite.demoKey, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
        body: JSON.stringify({ model: 'claude-front', messages: ASK }),
      });
      assert.equal(res.status, 400);
      assert.equal(await res.text(), '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}');
      await assert.rejects(client.messages.create({ model: 'no-such-model', max_tokens: 10, messages: ASK }), (err) => {
        assert.ok(err instanceof Anthropic.NotFoundError, String(err));
        assert.equal(err.error.error.type, 'not_found_error');
        return true;
      });
    });

    it('a refused billing hold (no balance) is rate_limit_error 429, before any upstream call', { timeout: 30_000 }, async () => {
      const user = (await suite.ctlJson(['auth', 'create-user', '--name=front-broke'])).user.id;
      const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, '--name=front-broke']);
      await suite.ctl(['billing', 'create-account', `--user-id=${user}`]);
      const broke = new Anthropic({ baseURL: suite.baseURL.replace(/\/v1$/, ''), apiKey: key, maxRetries: 0 });
      await suite.resetMock();
      await assert.rejects(broke.messages.create({ model: 'mock-front-priced', max_tokens: 1000, messages: ASK }), (err) => {
        assert.ok(err instanceof Anthropic.RateLimitError, String(err));
        assert.equal(err.status, 429);
        assert.equal(err.error.error.type, 'rate_limit_error');
        return true;
      });
      assert.equal((await suite.stats()).total, 0, 'no upstream call');
    });

    it('every key overloaded (529) is 529 overloaded_error, as Anthropic answers, not a 502', { timeout: 30_000 }, async () => {
      for (const key of SECRETS.slice(2)) await suite.setKeyBehavior(key, { status: 529 });
      try {
        const res = await fetch(`${suite.baseURL}/messages`, {
          method: 'POST',
          headers: { 'x-api-key': suite.demoKey, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
          body: JSON.stringify({ model: 'claude-front-busy', max_tokens: 10, messages: ASK }),
        });
        assert.equal(res.status, 529);
        const body = await res.json();
        assert.deepEqual(Object.keys(body), ['type', 'error']);
        assert.equal(body.error.type, 'overloaded_error');
        // Both keys were tried (failover before the first byte), each answering 529.
        const calls = (await (await fetch(`${suite.mockURL}/_mock/requests`)).json())
          .filter((r) => r.target === '/v1/messages' && r.body?.model === 'claude-haiku-busy');
        assert.deepEqual(calls.map((r) => r.headers['x-api-key']).sort(), SECRETS.slice(2));
        // The SDK sees the same (its 5xx class, typed overloaded_error); the plan may now be empty
        // (both keys' breakers open), which is overload too.
        await assert.rejects(client.messages.create({ model: 'claude-front-busy', max_tokens: 10, messages: ASK }), (err) => {
          assert.ok(err instanceof Anthropic.InternalServerError, String(err));
          assert.equal(err.status, 529);
          assert.equal(err.error.error.type, 'overloaded_error');
          return true;
        });
      } finally {
        for (const key of SECRETS.slice(2)) await suite.setKeyBehavior(key, {});
      }
    });

    it('GET /v1/messages is a 405 in Anthropic form', { timeout: 30_000 }, async () => {
      const res = await fetch(`${suite.baseURL}/messages`, { headers: { 'x-api-key': suite.demoKey } });
      assert.equal(res.status, 405);
      assert.equal(res.headers.get('allow'), 'POST');
      const body = await res.json();
      assert.equal(body.type, 'error');
      assert.equal(body.error.type, 'invalid_request_error');
    });
  });
});
