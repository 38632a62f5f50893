// The OpenAI surface through the official openai SDK: chat (streaming and not), tools round-trip,
// embeddings, models, stream_options.include_usage, x-request-id, x-tollgate-overhead-ms, real
// streaming (timed) and client disconnect mid-stream. Responses are validated against the OpenAI
// spec (../shared/spec/openai-openapi.json).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  addMockModel, findSecretsInLogs, loadSpec, openaiClient, specPath, startSuite, waitFor,
} from './harness.mjs';

const SLOW_MODEL = 'mock-chunks-5-delay-200'; // 5 content chunks, 200 ms before each
const VERY_SLOW_MODEL = 'mock-chunks-20-delay-300'; // ~6 s of streaming, for the disconnect test
const MESSAGES = [{ role: 'user', content: 'Say hello to the gateway.' }];

describe('openai SDK against the edge', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;
  let spec;

  before(async () => {
    suite = await startSuite();
    client = await openaiClient(suite);
    ({ default: OpenAI } = await import('openai'));
    spec = await loadSpec();
    await addMockModel(suite, SLOW_MODEL);
    await addMockModel(suite, VERY_SLOW_MODEL);
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  /** Validates value against components.schemas[name]; a skip note when the spec is absent. */
  function conforms(t, name, value) {
    if (!spec) { t.diagnostic(`spec validation skipped: ${specPath} not found`); return; }
    const errors = spec.validate(name, value);
    assert.deepEqual(errors, [], `${name} does not match the OpenAI spec:\n${JSON.stringify(value).slice(0, 2000)}`);
  }

  it('the OpenAI spec is available for validation', (t) => {
    if (!spec) t.skip(`${specPath} not found (set OPENAI_SPEC or place shared/ beside the clone): responses are not validated`);
  });

  it('chat completion, non-streaming', { timeout: 20_000 }, async (t) => {
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: MESSAGES, temperature: 0.2, user: 'e2e' })
      .withResponse();
    assert.equal(response.status, 200);
    assert.equal(data.object, 'chat.completion');
    assert.equal(data.model, 'gpt-4o-mini');
    assert.equal(data.choices.length, 1);
    assert.equal(data.choices[0].message.role, 'assistant');
    assert.ok(data.choices[0].message.content.length > 0, 'empty content');
    assert.equal(data.choices[0].finish_reason, 'stop');
    assert.ok(data.usage.total_tokens > 0, 'usage missing');
    conforms(t, 'CreateChatCompletionResponse', data);
    // Request fields pass through untouched.
    const last = await suite.mockLast();
    assert.equal(last.body.temperature, 0.2);
    assert.equal(last.body.user, 'e2e');
    assert.deepEqual(last.body.messages, MESSAGES);
  });

  it('chat completion, streaming: chunks concatenate to the non-streamed content', { timeout: 20_000 }, async (t) => {
    const full = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
    const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true });
    let text = '';
    let chunks = 0;
    let finish = null;
    for await (const chunk of stream) {
      chunks++;
      conforms(t, 'CreateChatCompletionStreamResponse', chunk);
      assert.equal(chunk.object, 'chat.completion.chunk');
      for (const c of chunk.choices) {
        text += c.delta?.content ?? '';
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.ok(chunks >= 3, `only ${chunks} chunks`);
    assert.equal(finish, 'stop');
    assert.equal(text, full.choices[0].message.content);
  });

  it('stream_options.include_usage: usage chunk only when asked, upstream always asked', { timeout: 20_000 }, async (t) => {
    const collect = async (extra) => {
      const out = [];
      const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true, ...extra });
      for await (const chunk of stream) { conforms(t, 'CreateChatCompletionStreamResponse', chunk); out.push(chunk); }
      return out;
    };

    const withUsage = await collect({ stream_options: { include_usage: true } });
    const usageChunks = withUsage.filter((c) => c.usage);
    assert.equal(usageChunks.length, 1, 'exactly one chunk carries usage when include_usage is true');
    const u = usageChunks[0];
    assert.equal(withUsage.at(-1), u, 'the usage chunk is the last one');
    assert.deepEqual(u.choices, []);
    assert.ok(u.usage.completion_tokens > 0 && u.usage.total_tokens === u.usage.prompt_tokens + u.usage.completion_tokens);
    assert.equal((await suite.mockLast()).body.stream_options?.include_usage, true);

    const without = await collect({});
    assert.equal(without.filter((c) => c.usage).length, 0, 'no usage chunk when the client did not ask');
    assert.equal(without.filter((c) => c.choices.length === 0).length, 0, 'no empty-choices chunk when the client did not ask');
    assert.equal((await suite.mockLast()).body.stream_options?.include_usage, true, 'upstream is always asked for usage');

    const declined = await collect({ stream_options: { include_usage: false } });
    assert.equal(declined.filter((c) => c.usage).length, 0, 'no usage chunk with include_usage: false');
  });

  it('streaming is really streaming: first chunk long before the last', { timeout: 20_000 }, async () => {
    // The delay comes from the model-name knob (the edge does not forward x-mock-* headers to the
    // upstream); the headers are sent as well, which is harmless either way.
    const t0 = performance.now();
    const stream = await client.chat.completions.create(
      { model: SLOW_MODEL, messages: MESSAGES, stream: true },
      { headers: { 'x-mock-chunk-delay-ms': '200', 'x-mock-chunks': '5' } },
    );
    const times = [];
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) times.push(performance.now() - t0);
    }
    assert.ok(times.length >= 5, `expected ≥5 content chunks, got ${times.length}`);
    const first = times[0];
    const last = times.at(-1);
    assert.ok(first < last - 600,
      `first content chunk at ${first.toFixed(0)} ms, last at ${last.toFixed(0)} ms: the stream was buffered (times ${times.map((x) => x.toFixed(0)).join(', ')})`);
  });

  it('tools round-trip: tool call, then the tool result answered', { timeout: 20_000 }, async (t) => {
    const tools = [{
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'Current weather in a city',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
          required: ['city'],
        },
      },
    }];
    const ask = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const first = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: ask, tools });
    conforms(t, 'CreateChatCompletionResponse', first);
    assert.deepEqual((await suite.mockLast()).body.tools, tools, 'tools reach the upstream untouched');
    const choice = first.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls');
    const calls = choice.message.tool_calls;
    assert.equal(calls?.length, 1);
    assert.equal(calls[0].type, 'function');
    assert.equal(calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].function.arguments), { city: 'mock', unit: 'celsius' });

    const result = JSON.stringify({ temperature: 21, unit: 'celsius' });
    const second = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      tools,
      messages: [...ask, choice.message, { role: 'tool', tool_call_id: calls[0].id, content: result }],
    });
    conforms(t, 'CreateChatCompletionResponse', second);
    assert.equal(second.choices[0].finish_reason, 'stop');
    assert.equal(second.choices[0].message.content, `The tool returned: ${result}`);
    const sent = (await suite.mockLast()).body.messages;
    assert.equal(sent.at(-1).role, 'tool');
    assert.equal(sent.at(-1).tool_call_id, calls[0].id);
    assert.deepEqual(sent.at(-2).tool_calls, calls);
  });

  it('embeddings: float and base64', { timeout: 20_000 }, async (t) => {
    const input = ['the quick brown fox', 'jumps over the lazy dog'];
    const raw = await client.embeddings
      .create({ model: 'text-embedding-3-small', input, encoding_format: 'float' })
      .asResponse();
    assert.equal(raw.status, 200);
    const float = await raw.json();
    conforms(t, 'CreateEmbeddingResponse', float);
    assert.equal(float.object, 'list');
    assert.equal(float.data.length, 2);
    for (const [i, d] of float.data.entries()) {
      assert.equal(d.index, i);
      assert.ok(Array.isArray(d.embedding) && d.embedding.length > 0 && d.embedding.every((x) => typeof x === 'number'));
    }
    assert.ok(float.usage.prompt_tokens > 0);

    const b64 = await client.embeddings.create({ model: 'text-embedding-3-small', input, encoding_format: 'base64' });
    assert.equal(b64.data.length, 2);
    for (const [i, d] of b64.data.entries()) {
      assert.equal(typeof d.embedding, 'string', 'base64 embedding is a string');
      const buf = Buffer.from(d.embedding, 'base64');
      const vec = Array.from(new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4));
      assert.equal(vec.length, float.data[i].embedding.length);
      vec.forEach((x, k) => assert.ok(Math.abs(x - float.data[i].embedding[k]) < 1e-6, `component ${k}: ${x} vs ${float.data[i].embedding[k]}`));
    }
    assert.equal((await suite.mockLast()).body.encoding_format, 'base64');

    // The SDK's default: it asks for base64 and decodes.
    const dflt = await client.embeddings.create({ model: 'text-embedding-3-small', input: input[0] });
    assert.equal(dflt.data.length, 1);
    dflt.data[0].embedding.forEach((x, k) => assert.ok(Math.abs(x - float.data[0].embedding[k]) < 1e-6));
  });

  it('models: list and retrieve', { timeout: 20_000 }, async (t) => {
    const raw = await client.models.list().asResponse();
    assert.equal(raw.status, 200);
    const list = await raw.json();
    conforms(t, 'ListModelsResponse', list);
    const ids = list.data.map((m) => m.id);
    for (const id of ['gpt-4o-mini', 'gpt-4o', 'text-embedding-3-small', 'mock-model', SLOW_MODEL]) {
      assert.ok(ids.includes(id), `${id} missing from ${ids.join(', ')}`);
    }
    assert.equal(new Set(ids).size, ids.length, 'duplicate model ids');

    const page = await client.models.list();
    assert.deepEqual(page.data.map((m) => m.id).sort(), [...ids].sort());

    const m = await client.models.retrieve('gpt-4o');
    assert.equal(m.id, 'gpt-4o');
    assert.equal(m.object, 'model');
    assert.equal(typeof m.created, 'number');
    assert.equal(typeof m.owned_by, 'string');
    conforms(t, 'Model', m);

    await assert.rejects(client.models.retrieve('no-such-model-e2e'), (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 404);
      conforms(t, 'ErrorResponse', { error: err.error });
      return true;
    });
  });

  it('x-request-id echoed or generated; x-tollgate-overhead-ms present', { timeout: 20_000 }, async () => {
    const mine = `e2e-${Date.now()}`;
    const echoed = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: MESSAGES }, { headers: { 'x-request-id': mine } })
      .withResponse();
    assert.equal(echoed.response.headers.get('x-request-id'), mine);

    const checkOverhead = (h, what) => {
      const v = h.get('x-tollgate-overhead-ms');
      assert.ok(v !== null, `${what}: x-tollgate-overhead-ms missing`);
      assert.ok(Number.isFinite(Number(v)) && Number(v) >= 0, `${what}: x-tollgate-overhead-ms=${v}`);
    };
    checkOverhead(echoed.response.headers, 'chat');

    const gen1 = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }).withResponse();
    const gen2 = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }).withResponse();
    const id1 = gen1.response.headers.get('x-request-id');
    const id2 = gen2.response.headers.get('x-request-id');
    assert.ok(id1 && id2, 'x-request-id generated');
    assert.notEqual(id1, id2, 'generated request ids are unique');

    const streamed = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true }, { headers: { 'x-request-id': `${mine}-s` } })
      .withResponse();
    assert.equal(streamed.response.headers.get('x-request-id'), `${mine}-s`);
    for await (const _ of streamed.data) { /* drain */ }

    const models = await client.models.list().withResponse();
    assert.ok(models.response.headers.get('x-request-id'), 'models: x-request-id');
    checkOverhead(models.response.headers, 'models');

    const emb = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'x', encoding_format: 'float' }).withResponse();
    assert.ok(emb.response.headers.get('x-request-id'), 'embeddings: x-request-id');
    checkOverhead(emb.response.headers, 'embeddings');

    // Errors carry them too.
    const res = await fetch(`${suite.baseURL}/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer x', 'x-request-id': `${mine}-e` },
      body: '{', signal: AbortSignal.timeout(10_000),
    });
    await res.text();
    assert.equal(res.status, 400);
    assert.equal(res.headers.get('x-request-id'), `${mine}-e`);
  });

  it('streaming response carries x-tollgate-overhead-ms (header or trailer)', { timeout: 20_000 }, async () => {
    const { response, data } = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true })
      .withResponse();
    for await (const _ of data) { /* drain */ }
    // fetch exposes no trailers: the header is what a client can see.
    const v = response.headers.get('x-tollgate-overhead-ms');
    assert.ok(v !== null && Number.isFinite(Number(v)), `x-tollgate-overhead-ms=${v}`);
  });

  it('client disconnect mid-stream cancels the upstream call', { timeout: 20_000 }, async () => {
    const before = await suite.stats();
    const ac = new AbortController();
    const stream = await client.chat.completions.create(
      { model: VERY_SLOW_MODEL, messages: MESSAGES, stream: true }, { signal: ac.signal });
    let got = 0;
    try {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) { got++; ac.abort(); }
      }
    } catch (err) {
      // The SDK ends the iteration quietly on abort, or raises APIUserAbortError: both are fine.
      if (!(err instanceof OpenAI.APIUserAbortError) && err?.name !== 'AbortError') throw err;
    }
    assert.equal(got, 1);
    const abortedAt = Date.now();
    const after = await waitFor(async () => {
      const s = await suite.stats();
      return s.cancelled > before.cancelled ? s : null;
    }, { timeoutMs: 2000, intervalMs: 50, what: 'the mock to count the upstream call as cancelled' });
    assert.equal(after.cancelled, before.cancelled + 1);
    const s = await waitFor(async () => { const x = await suite.stats(); return x.in_flight === 0 ? x : null; },
      { timeoutMs: 2000, what: 'no upstream request in flight' });
    assert.equal(s.in_flight, 0);
    assert.ok(Date.now() - abortedAt < 2000);
  });

  it('logs hold no upstream secret, admin token or master key', { timeout: 120_000 }, async () => {
    await suite.stop();
    const hits = findSecretsInLogs(suite);
    assert.deepEqual(hits, []);
  });
});
