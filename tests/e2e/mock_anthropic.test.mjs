// The mock upstream's Anthropic mode, through the official @anthropic-ai/sdk against the mock
// alone (no Tollgate suite): messages.create, messages.stream with text and with parallel tool
// calls (finalMessage() has each tool_use input parsed from input_json_delta pieces that cut
// across JSON tokens), tool results, stop sequences and max_tokens, cache usage, count_tokens,
// and errors as the SDK's typed errors (RateLimitError with retry-after, OverloadedError 529,
// InternalServerError, AuthenticationError, BadRequestError, a mid-stream `error` event).
// tollgate-e2e: standalone (tests/CMakeLists.txt runs this file once, in no deployment mode)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { buildDir } from './harness.mjs';

const MOCK_BIN = path.join(buildDir, 'tools/mock_upstream/tollgate-mock-upstream');
const KEY = 'sk-ant-mock-key';
const WEATHER = {
  name: 'get_weather',
  description: 'Weather for a city',
  input_schema: {
    type: 'object',
    properties: {
      city: { type: 'string' },
      days: { type: 'integer' },
      unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      hourly: { type: 'boolean' },
    },
    required: ['city'],
  },
};
const TIME = {
  name: 'get_time',
  input_schema: { type: 'object', properties: { zone: { type: 'string' } } },
};
const WEATHER_INPUT = { city: 'mock', days: 1, unit: 'celsius', hourly: true };
const ASK = [{ role: 'user', content: 'What is the weather in Paris?' }];

/** Starts the mock alone on 127.0.0.1, port 0; resolves {url, stop}. */
function startMock(args = []) {
  const child = spawn(MOCK_BIN, ['--listen=127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('mock did not start in 10 s')), 10_000);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`mock exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(line);
      if (!m) return reject(new Error(`unexpected mock output: ${line}`));
      child.removeAllListeners('exit');
      resolve({
        url: `http://127.0.0.1:${m[1]}`,
        stop: () => new Promise((r) => {
          if (child.exitCode !== null) return r();
          child.once('exit', () => r());
          child.kill('SIGTERM');
        }),
      });
    });
  });
}

/** POSTs a raw Messages API request; resolves {status, headers, text}. */
async function rawMessages(url, body, headers = {}) {
  const res = await fetch(`${url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY, 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** Parses an SSE body into [{event, data}]. */
function parseSse(text) {
  return text.split('\n\n').filter((e) => e.trim()).map((e) => {
    const event = /^event: (.*)$/m.exec(e)?.[1];
    const data = /^data: (.*)$/m.exec(e)?.[1];
    return { event, data: JSON.parse(data) };
  });
}

describe('mock upstream: Anthropic mode through @anthropic-ai/sdk', { timeout: 60_000 }, () => {
  let mock;
  let client;
  let Anthropic;

  before(async () => {
    mock = await startMock([`--require-key=${KEY}`]);
    ({ default: Anthropic } = await import('@anthropic-ai/sdk'));
    client = new Anthropic({ apiKey: KEY, baseURL: mock.url, maxRetries: 0, timeout: 10_000 });
  });
  after(async () => { await mock?.stop(); });

  it('messages.create: a deterministic text message with full usage', async () => {
    const msg = await client.messages.create({ model: 'claude-mock', max_tokens: 100, messages: ASK });
    assert.match(msg.id, /^msg_/);
    assert.equal(msg.type, 'message');
    assert.equal(msg.role, 'assistant');
    assert.equal(msg.model, 'claude-mock');
    assert.equal(msg.content.length, 1);
    assert.equal(msg.content[0].type, 'text');
    assert.equal(msg.content[0].text.split(' ').length, 10);
    assert.equal(msg.stop_reason, 'end_turn');
    assert.equal(msg.stop_sequence, null);
    assert.equal(msg.usage.output_tokens, 10);
    assert.equal(msg.usage.input_tokens, Math.ceil('What is the weather in Paris?'.length / 4));
    assert.equal(msg.usage.cache_creation_input_tokens, 0);
    assert.equal(msg.usage.cache_read_input_tokens, 0);
    const again = await client.messages.create({ model: 'claude-mock', max_tokens: 100, messages: ASK });
    assert.equal(again.content[0].text, msg.content[0].text);

    // What the mock received, as its request log shows it.
    const last = await (await fetch(`${mock.url}/_mock/last`)).json();
    assert.equal(last.target, '/v1/messages');
    // The SDK sends the key as a bearer token (1.x); the mock takes that or x-api-key.
    assert.ok(last.headers['x-api-key'] === KEY || last.headers.authorization === `Bearer ${KEY}`);
    assert.ok(last.headers['anthropic-version']);
    assert.equal(last.body.max_tokens, 100);
  });

  it('max_tokens and stop_sequences end the text with their stop_reason', async () => {
    const cut = await client.messages.create({ model: 'claude-mock', max_tokens: 3, messages: ASK });
    assert.equal(cut.stop_reason, 'max_tokens');
    assert.equal(cut.usage.output_tokens, 3);
    assert.equal(cut.content[0].text.split(' ').length, 3);

    const full = await client.messages.create({ model: 'claude-mock', max_tokens: 100, messages: ASK });
    const words = full.content[0].text.split(' ');
    const stop = words[4];
    const stopped = await client.messages.create({
      model: 'claude-mock', max_tokens: 100, messages: ASK, stop_sequences: ['never-there', stop],
    });
    assert.equal(stopped.stop_reason, 'stop_sequence');
    assert.equal(stopped.stop_sequence, stop);
    assert.equal(stopped.content[0].text, full.content[0].text.slice(0, full.content[0].text.indexOf(stop)));
    assert.ok(!stopped.content[0].text.includes(stop));
  });

  it('messages.stream (text): the events of the Messages stream, reassembled to the same message', async () => {
    const body = { model: 'mock-chunks-4', max_tokens: 100, messages: ASK };
    const expected = await client.messages.create(body);
    const stream = client.messages.stream(body);
    const types = [];
    stream.on('streamEvent', (e) => types.push(e.type));
    const final = await stream.finalMessage();
    assert.equal(final.content[0].text, expected.content[0].text);
    assert.equal(final.stop_reason, 'end_turn');
    assert.equal(final.usage.output_tokens, expected.usage.output_tokens);
    assert.equal(final.usage.input_tokens, expected.usage.input_tokens);
    assert.deepEqual(types, [
      'message_start', 'content_block_start', ...Array(4).fill('content_block_delta'),
      'content_block_stop', 'message_delta', 'message_stop',
    ]);

    // On the wire: event names matching each data's type, and one ping after the first block starts.
    const raw = await rawMessages(mock.url, { ...body, stream: true });
    assert.equal(raw.status, 200);
    assert.match(raw.headers.get('content-type'), /^text\/event-stream/);
    assert.match(raw.headers.get('request-id'), /^req_/);
    const events = parseSse(raw.text);
    for (const e of events) assert.equal(e.event, e.data.type);
    assert.deepEqual(events.slice(0, 3).map((e) => e.event), ['message_start', 'content_block_start', 'ping']);
    const start = events[0].data.message;
    assert.deepEqual(start.content, []);
    assert.equal(start.stop_reason, null);
    assert.equal(typeof start.usage.input_tokens, 'number');
    const delta = events.find((e) => e.event === 'message_delta').data;
    assert.deepEqual(delta.delta, { stop_reason: 'end_turn', stop_sequence: null });
    assert.equal(delta.usage.output_tokens, expected.usage.output_tokens);
  });

  it('tool use: tool_use blocks with inputs from each input_schema, not streamed and streamed', async () => {
    const body = { model: 'claude-mock', max_tokens: 200, tools: [WEATHER, TIME], messages: ASK };
    const msg = await client.messages.create(body);
    assert.equal(msg.stop_reason, 'tool_use');
    // tool_choice auto (the default): a short text block, then the call.
    assert.deepEqual(msg.content.map((b) => b.type), ['text', 'tool_use']);
    const call = msg.content[1];
    assert.match(call.id, /^toolu_/);
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(call.input, WEATHER_INPUT);

    const stream = client.messages.stream(body);
    const pieces = [];
    stream.on('streamEvent', (e) => {
      if (e.type === 'content_block_delta' && e.delta.type === 'input_json_delta') pieces.push(e.delta.partial_json);
    });
    const final = await stream.finalMessage();
    const withoutIds = (content) => content.map(({ id, ...rest }) => rest);  // ids differ per request
    assert.deepEqual(withoutIds(final.content), withoutIds(msg.content));
    assert.match(final.content[1].id, /^toolu_/);
    assert.equal(final.stop_reason, 'tool_use');
    assert.equal(final.usage.output_tokens, msg.usage.output_tokens);
    assert.ok(pieces.length >= 3, `${pieces.length} input_json_delta pieces`);
    assert.deepEqual(JSON.parse(pieces.join('')), WEATHER_INPUT);
    // Pieces cut across JSON tokens: some piece is no whole JSON value and splits a string.
    assert.ok(pieces.some((p) => (p.split('"').length - 1) % 2 === 1), pieces.join(' | '));
  });

  it('parallel tool calls (tools-N), disable_parallel_tool_use, tool_choice any/tool/none', async () => {
    const base = { max_tokens: 200, tools: [WEATHER, TIME], messages: ASK };
    const stream = client.messages.stream({ ...base, model: 'mock-tools-2', tool_choice: { type: 'any' } });
    const final = await stream.finalMessage();
    assert.deepEqual(final.content.map((b) => [b.type, b.name]), [['tool_use', 'get_weather'], ['tool_use', 'get_time']]);
    assert.deepEqual(final.content[0].input, WEATHER_INPUT);
    assert.deepEqual(final.content[1].input, { zone: 'mock' });
    assert.notEqual(final.content[0].id, final.content[1].id);

    const single = await client.messages.create({
      ...base, model: 'mock-tools-2', tool_choice: { type: 'any', disable_parallel_tool_use: true },
    });
    assert.deepEqual(single.content.map((b) => b.type), ['tool_use']);

    const named = await client.messages.create({ ...base, model: 'claude-mock', tool_choice: { type: 'tool', name: 'get_time' } });
    assert.deepEqual(named.content.map((b) => [b.type, b.name]), [['tool_use', 'get_time']]);

    const none = await client.messages.create({ ...base, model: 'claude-mock', tool_choice: { type: 'none' } });
    assert.equal(none.stop_reason, 'end_turn');
    assert.deepEqual(none.content.map((b) => b.type), ['text']);
  });

  it('tool_result blocks are accepted, answered and counted as input', async () => {
    const first = await client.messages.create({
      model: 'claude-mock', max_tokens: 200, tools: [WEATHER], tool_choice: { type: 'any' }, messages: ASK,
    });
    const use = first.content[0];
    const followUp = (result) => client.messages.create({
      model: 'claude-mock', max_tokens: 200, tools: [WEATHER],
      messages: [
        ...ASK,
        { role: 'assistant', content: first.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: result }] },
      ],
    });
    const short = await followUp('Sunny');
    assert.equal(short.stop_reason, 'end_turn');
    assert.deepEqual(short.content, [{ type: 'text', text: 'The tool returned: Sunny' }]);
    const long = await followUp([{ type: 'text', text: 'Sunny, 24 degrees, light wind from the west all day long' }]);
    // ceil(bytes / 4): the longer result adds (56 - 5) bytes, so 12 or 13 tokens.
    const added = long.usage.input_tokens - short.usage.input_tokens;
    assert.ok(added === 12 || added === 13, `${added} tokens added`);
  });

  it('count_tokens: the input_tokens a message would report', async () => {
    const body = { model: 'claude-mock', system: 'You are terse.', tools: [WEATHER], messages: ASK };
    const counted = await client.messages.countTokens(body);
    const msg = await client.messages.create({ ...body, max_tokens: 50, tool_choice: { type: 'none' } });
    assert.equal(counted.input_tokens, msg.usage.input_tokens);
    assert.ok(counted.input_tokens > Math.ceil(JSON.stringify(WEATHER).length / 4) - 1);
  });

  it('cache_control: cache creation on first sight, cache read for the same prefix afterwards', async () => {
    await fetch(`${mock.url}/_mock/reset`, { method: 'POST' });
    const system = [
      { type: 'text', text: 'A long, stable system prompt. '.repeat(20), cache_control: { type: 'ephemeral' } },
    ];
    const body = { model: 'claude-mock', max_tokens: 50, system, messages: ASK };
    const prefix = Math.ceil(system[0].text.length / 4);
    const first = await client.messages.create(body);
    assert.equal(first.usage.cache_creation_input_tokens, prefix);
    assert.equal(first.usage.cache_read_input_tokens, 0);
    const second = await client.messages.stream(body).finalMessage();
    assert.equal(second.usage.cache_creation_input_tokens, 0);
    assert.equal(second.usage.cache_read_input_tokens, prefix);
    assert.equal(second.usage.input_tokens, first.usage.input_tokens);
    const counted = await client.messages.countTokens({ model: body.model, system, messages: ASK });
    assert.equal(counted.input_tokens, first.usage.input_tokens + prefix);
    // A different prefix is a new cache entry; no cache_control, no cache tokens.
    const other = await client.messages.create({ ...body, system: [{ ...system[0], text: 'Another prompt.' }] });
    assert.ok(other.usage.cache_creation_input_tokens > 0);
    const plain = await client.messages.create({ ...body, system: system[0].text });
    assert.equal(plain.usage.cache_creation_input_tokens + plain.usage.cache_read_input_tokens, 0);
  });

  it('errors surface as the SDK typed errors with Anthropic error bodies', async () => {
    const create = (model) => client.messages.create({ model, max_tokens: 10, messages: ASK });
    await assert.rejects(create('mock-429-retry-2'), (e) => {
      assert.ok(e instanceof Anthropic.RateLimitError, e.constructor.name);
      assert.equal(e.status, 429);
      assert.equal(e.headers.get('retry-after'), '2');
      assert.equal(e.error.type, 'error');
      assert.equal(e.error.error.type, 'rate_limit_error');
      assert.match(e.requestID, /^req_/);
      return true;
    });
    await assert.rejects(create('mock-529'), (e) => {
      assert.ok(e instanceof Anthropic.InternalServerError, e.constructor.name);
      assert.equal(e.status, 529);
      assert.equal(e.error.error.type, 'overloaded_error');
      return true;
    });
    await assert.rejects(create('mock-500'), (e) => {
      assert.ok(e instanceof Anthropic.InternalServerError, e.constructor.name);
      assert.equal(e.status, 500);
      assert.equal(e.error.error.type, 'api_error');
      return true;
    });
    await assert.rejects(create('mock-400'), (e) => {
      assert.ok(e instanceof Anthropic.BadRequestError, e.constructor.name);
      assert.equal(e.error.error.type, 'invalid_request_error');
      return true;
    });
    const stranger = new Anthropic({ apiKey: 'sk-ant-wrong', baseURL: mock.url, maxRetries: 0 });
    await assert.rejects(stranger.messages.create({ model: 'claude-mock', max_tokens: 10, messages: ASK }), (e) => {
      assert.ok(e instanceof Anthropic.AuthenticationError, e.constructor.name);
      assert.equal(e.status, 401);
      assert.equal(e.error.error.type, 'authentication_error');
      return true;
    });
    const missing = await rawMessages(mock.url, { model: 'claude-mock', max_tokens: 10, messages: ASK }, { 'x-api-key': '' });
    assert.equal(missing.status, 401);
    assert.deepEqual(JSON.parse(missing.text).error, { type: 'authentication_error', message: 'x-api-key header is required' });
  });

  it('request validation: invalid_request_error 400 as the Messages API words it', async () => {
    const bad = async (body, pattern) => {
      await assert.rejects(client.messages.create(body), (e) => {
        assert.ok(e instanceof Anthropic.BadRequestError, e.constructor.name);
        assert.equal(e.error.error.type, 'invalid_request_error');
        assert.match(e.error.error.message, pattern);
        return true;
      });
    };
    await bad({ model: 'claude-mock', messages: ASK }, /^max_tokens: Field required/);
    await bad({ max_tokens: 10, messages: ASK }, /^model: Field required/);
    await bad({ model: 'claude-mock', max_tokens: 10, messages: [{ role: 'assistant', content: 'hi' }] }, /first message/);
    await bad({ model: 'claude-mock', max_tokens: 10, messages: [...ASK, { role: 'user', content: 'again' }] }, /alternate/);
  });

  it('a mid-stream error event (midstream-N) rejects the SDK stream with its error type', async () => {
    const stream = client.messages.stream({ model: 'mock-midstream-5', max_tokens: 100, messages: ASK });
    let text = '';
    stream.on('text', (t) => { text += t; });
    await assert.rejects(stream.finalMessage(), (e) => {
      assert.ok(e instanceof Anthropic.APIError, e.constructor.name);
      assert.equal(e.type, 'overloaded_error');
      return true;
    });
    assert.ok(text.length > 0, 'some text arrived before the error');
    const raw = await rawMessages(mock.url, { model: 'mock-midstream-4-code-api_error', max_tokens: 100, messages: ASK, stream: true });
    const events = parseSse(raw.text);
    assert.equal(events.length, 5);
    assert.equal(events.at(-1).event, 'error');
    assert.equal(events.at(-1).data.error.type, 'api_error');
  });
});
