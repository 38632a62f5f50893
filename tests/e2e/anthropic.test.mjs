// An Anthropic upstream behind the OpenAI chat API (issue #11), end to end with the openai SDK: a
// provider of type anthropic pointing at the mock upstream's Anthropic mode (POST /v1/messages),
// chat non-streamed and streamed with tools, the usage and cost recorded by billing, failover from
// a key answering 529 (overloaded) to the other key, and a legacy completion refused with a 400.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  addAnthropicProvider, addRoutedModel, findSecretsInLogs, openaiClient, sleep, startSuite, waitFor,
} from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'tell me about the weather' }];
const SECRETS = ['ant-key-a', 'ant-key-b'];
const PRICE_IN = 3_000_000; // micro-units per million tokens
const PRICE_OUT = 15_000_000;
const today = () => new Date().toISOString().slice(0, 10);
const PARAMS = { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } } };
const TOOLS = ['weather', 'forecast'].map((name) => ({ type: 'function', function: { name, parameters: PARAMS } }));

describe('anthropic upstream', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;
  let demoUser;

  before(async () => {
    suite = await startSuite();
    ({ default: OpenAI } = await import('openai'));
    client = await openaiClient(suite);
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    demoUser = users.find((u) => u.name === 'demo').id;
    const provider = await addAnthropicProvider(suite, 'anthropic', SECRETS);
    await addRoutedModel(suite, 'claude-e2e', provider, 'claude-haiku-e2e');
    await addRoutedModel(suite, 'claude-priced', provider, 'claude-haiku-e2e');
    await addRoutedModel(suite, 'claude-tools', provider, 'mock-tools-2');
    await addRoutedModel(suite, 'claude-failover', provider, 'claude-haiku-e2e');
    await suite.ctl(['billing', 'set-price', '--model=claude-priced', `--input-micros-per-mtok=${PRICE_IN}`,
      `--output-micros-per-mtok=${PRICE_OUT}`]);
    await sleep(1500); // edge.routing_refresh: the edges' tables have the catalogue
  }, { timeout: 240_000 });

  after(async () => {
    if (suite) {
      const leaks = findSecretsInLogs(suite, SECRETS);
      await suite.down();
      assert.deepEqual(leaks, [], 'no upstream secret in any log');
    }
  }, { timeout: 120_000 });

  it('the provider is listed with type anthropic', async () => {
    const { providers } = await suite.ctlJson(['router', 'list-providers']);
    const p = providers.find((x) => x.name === 'anthropic');
    assert.equal(p.type, 'PROVIDER_TYPE_ANTHROPIC');
  });

  it('chat, non-streamed: a chat.completion translated from the Messages API', { timeout: 30_000 }, async () => {
    const r = await client.chat.completions.create({ model: 'claude-e2e', messages: MESSAGES, max_tokens: 200 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, 'claude-e2e');
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.ok(r.choices[0].message.content.length > 0);
    assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/messages');
    assert.equal(last.headers['anthropic-version'], '2023-06-01');
    assert.ok(SECRETS.includes(last.headers['x-api-key']));
    assert.equal(last.headers.authorization, undefined);
    assert.equal(last.body.model, 'claude-haiku-e2e');
    assert.equal(last.body.max_tokens, 200);
  });

  it('chat, streamed with tools: tool_calls chunks whose arguments reassemble to JSON', { timeout: 30_000 }, async () => {
    const stream = await client.chat.completions.create({
      model: 'claude-tools', messages: MESSAGES, tools: TOOLS, stream: true, stream_options: { include_usage: true },
    });
    const calls = new Map(); // index -> {name, args}
    let finish = null;
    let usage = null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        if (choice.finish_reason) finish = choice.finish_reason;
        for (const tc of choice.delta?.tool_calls ?? []) {
          const c = calls.get(tc.index) ?? { name: '', args: '' };
          if (tc.function?.name) c.name = tc.function.name;
          c.args += tc.function?.arguments ?? '';
          calls.set(tc.index, c);
        }
      }
    }
    assert.ok(chunks > 3, `${chunks} chunks`);
    assert.equal(finish, 'tool_calls');
    assert.deepEqual([...calls.keys()].sort(), [0, 1]);
    assert.deepEqual([...calls.values()].map((c) => c.name), ['weather', 'forecast']);
    for (const c of calls.values()) {
      const args = JSON.parse(c.args);
      assert.equal(typeof args.city, 'string');
    }
    assert.ok(usage && usage.prompt_tokens > 0 && usage.completion_tokens > 0, JSON.stringify(usage));
  });

  it('usage and cost are recorded from the translated usage', { timeout: 30_000 }, async () => {
    const r = await client.chat.completions.create({ model: 'claude-priced', messages: MESSAGES });
    const { prompt_tokens: p, completion_tokens: o } = r.usage;
    const cost = Math.ceil((p * PRICE_IN + o * PRICE_OUT) / 1e6);
    const usageByModel = async () => {
      const rep = await suite.ctlJson(['billing', 'usage-report', `--from-day=${today()}`, `--to-day=${today()}`,
        '--group-by=model', `--user-id=${demoUser}`]);
      return Object.fromEntries((rep.rows ?? []).map((row) => [row.model, row]));
    };
    const row = await waitFor(async () => (await usageByModel())['claude-priced'],
      { timeoutMs: 10_000, what: 'the usage record' });
    assert.equal(Number(row.requests), 1);
    assert.equal(Number(row.prompt_tokens), p);
    assert.equal(Number(row.completion_tokens), o);
    assert.equal(Number(row.cost_micros), cost);
  });

  it('cache_control breakpoints reach Anthropic: a cache write, then a read, in OpenAI usage', { timeout: 30_000 }, async () => {
    // The form LiteLLM and OpenRouter take (a part's cache_control): the openai SDK sends it as given.
    const ask = () => client.chat.completions.create({
      model: 'claude-e2e', max_tokens: 50,
      messages: [
        { role: 'system', content: [{ type: 'text', text: 'A long and stable rule book. '.repeat(30), cache_control: { type: 'ephemeral' } }] },
        { role: 'user', content: 'hello', cache_control: { type: 'ephemeral' } },
      ],
    });
    const first = await ask();
    const sent = (await suite.mockLast()).body;
    assert.deepEqual(sent.system.at(-1).cache_control, { type: 'ephemeral' }, JSON.stringify(sent));
    assert.deepEqual(sent.messages.at(-1).content, [{ type: 'text', text: 'hello', cache_control: { type: 'ephemeral' } }]);
    assert.ok(first.usage.prompt_tokens_details.cache_write_tokens > 0, JSON.stringify(first.usage));
    const second = await ask();
    assert.ok(second.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(second.usage));
    assert.equal(second.usage.prompt_tokens, first.usage.prompt_tokens);
  });

  it('a key answering 529 (overloaded) fails over to the other key before the first byte', { timeout: 30_000 }, async () => {
    await suite.resetMock();
    await suite.setKeyBehavior('ant-key-a', { status: 529 });
    try {
      for (let i = 0; i < 6; i++) {
        const r = await client.chat.completions.create({ model: 'claude-failover', messages: MESSAGES, stream: i % 2 === 1 });
        if (i % 2 === 1) {
          let text = '';
          for await (const chunk of r) text += chunk.choices[0]?.delta?.content ?? '';
          assert.ok(text.length > 0, `stream ${i}`);
        } else {
          assert.equal(r.choices[0].finish_reason, 'stop', `request ${i}`);
        }
      }
      const byKey = (await suite.stats()).by_key;
      assert.ok((byKey['ant-key-a'] ?? 0) >= 1, JSON.stringify(byKey));
      assert.equal(byKey['ant-key-b'], 6, JSON.stringify(byKey));
    } finally {
      await suite.setKeyBehavior('ant-key-a', {});
    }
  });

  it('only chat translates: a legacy completion for an Anthropic model is a 400 in OpenAI form', { timeout: 30_000 }, async () => {
    await assert.rejects(client.completions.create({ model: 'claude-e2e', prompt: 'hello' }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, String(err));
      assert.equal(err.error?.type, 'invalid_request_error');
      return true;
    });
  });
});
