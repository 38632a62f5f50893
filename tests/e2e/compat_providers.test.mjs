// OpenAI-compatible providers (issue #11): Gemini, DeepSeek, Mistral, Groq, OpenRouter, vLLM and
// Ollama registered with tollgatectl as `openai-compatible` providers, each with its own base
// path (docs/providers.md), here pointed at the mock upstream, which serves any prefix and records
// the exact target: the edge calls `{base_url}/chat/completions`, never a doubled path. Base URLs
// that already end with the endpoint path, or double /v1, are refused by the router. And an
// upstream reporting prompt-cache writes (prompt_tokens_details.cache_write_tokens) is billed at
// the model's cache-write price.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findSecretsInLogs, openaiClient, sleep, startSuite, waitFor } from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'which path did you come in on?' }];
const today = () => new Date().toISOString().slice(0, 10);

// name, the provider's published base URL path (docs/providers.md), an upstream model of theirs.
const PROVIDERS = [
  ['gemini', '/v1beta/openai', 'gemini-2.5-flash'],
  ['deepseek', '', 'deepseek-chat'],
  ['deepseek-v1', '/v1', 'deepseek-reasoner'],
  ['mistral', '/v1', 'mistral-small-latest'],
  ['groq', '/openai/v1', 'llama-3.3-70b-versatile'],
  ['openrouter', '/api/v1', 'anthropic/claude-sonnet-4.5'],
  ['vllm', '/v1', 'Qwen/Qwen2.5-7B-Instruct'],
  ['ollama', '/v1', 'llama3.2'],
];
const SECRETS = PROVIDERS.map(([name]) => `compat-secret-${name}`);

// Prices of the cache-write model, micro-units per 1M tokens.
const IN = 1_000_000;
const OUT = 5_000_000;
const CACHE_WRITE = 1_250_000;

describe('openai-compatible providers', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let demoUser;
  const providerIds = {};

  before(async () => {
    suite = await startSuite();
    client = await openaiClient(suite);
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    demoUser = users.find((u) => u.name === 'demo').id;
    for (const [i, [name, prefix, upstream]] of PROVIDERS.entries()) {
      // A trailing slash, as operators often paste it, is dropped.
      const { provider } = await suite.ctlJson(['router', 'create-provider', `--name=${name}`, '--type=openai-compatible',
        `--base-url=http://127.0.0.1:${suite.mockPort}${prefix}/`]);
      providerIds[name] = provider.id;
      await suite.ctl(['router', 'create-upstream-key', `--provider-id=${provider.id}`, `--name=${name}-1`,
        `--secret=${SECRETS[i]}`]);
      await suite.ctl(['router', 'create-model', `--name=compat-${name}`, `--owned-by=${name}`]);
      await suite.ctl(['router', 'set-model-route', `--model=compat-${name}`, `--provider-id=${provider.id}`,
        `--upstream-model=${upstream}`]);
    }
    // OpenRouter reports cache writes for the providers that bill them; the mock's cachewrite-N
    // directive makes it report N of the prompt's tokens as written.
    await suite.ctl(['router', 'create-model', '--name=compat-cache', '--owned-by=openrouter']);
    await suite.ctl(['router', 'set-model-route', '--model=compat-cache', `--provider-id=${providerIds.openrouter}`,
      '--upstream-model=mock-cachewrite-40']);
    await suite.ctl(['billing', 'set-price', '--model=compat-cache', `--input-micros-per-mtok=${IN}`,
      `--output-micros-per-mtok=${OUT}`, `--cache-write-micros-per-mtok=${CACHE_WRITE}`]);
    await sleep(1500); // edge.routing_refresh: the edges' tables have the catalogue
  }, { timeout: 240_000 });

  after(async () => {
    if (suite) {
      const leaks = findSecretsInLogs(suite, SECRETS);
      await suite.down();
      assert.deepEqual(leaks, [], 'no upstream secret in any log');
    }
  }, { timeout: 120_000 });

  it('each provider is called on {base_url}/chat/completions, with its key and its model', { timeout: 60_000 }, async () => {
    for (const [i, [name, prefix, upstream]] of PROVIDERS.entries()) {
      const r = await client.chat.completions.create({ model: `compat-${name}`, messages: MESSAGES });
      assert.equal(r.object, 'chat.completion', name);
      const last = await suite.mockLast();
      assert.equal(last.target, `${prefix}/chat/completions`, name);
      assert.equal(last.headers.authorization, `Bearer ${SECRETS[i]}`, name);
      assert.equal(last.body.model, upstream, name);
    }
  });

  it('streams and embeddings take the same prefix', { timeout: 30_000 }, async () => {
    const stream = await client.chat.completions.create({ model: 'compat-groq', messages: MESSAGES, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    assert.ok(text.length > 0);
    assert.equal((await suite.mockLast()).target, '/openai/v1/chat/completions');
    const e = await client.embeddings.create({ model: 'compat-gemini', input: 'x' });
    assert.equal(e.data.length, 1);
    assert.equal((await suite.mockLast()).target, '/v1beta/openai/embeddings');
  });

  it('a base URL that already ends with the endpoint path, or doubles /v1, is refused', { timeout: 30_000 }, async () => {
    const refused = async (url, why) => {
      await assert.rejects(suite.ctl(['router', 'create-provider', '--name=bad', '--type=openai-compatible',
        `--base-url=${url}`]), (err) => {
        assert.match(err.message, why);
        return true;
      });
    };
    await refused(`http://127.0.0.1:${suite.mockPort}/openai/v1/chat/completions`,
      new RegExp(`give http://127\\.0\\.0\\.1:${suite.mockPort}/openai/v1\\.`));
    await refused(`http://127.0.0.1:${suite.mockPort}/v1/v1`, /doubled \/v1/);
    await assert.rejects(suite.ctl(['router', 'update-provider', `--id=${providerIds.mistral}`,
      `--base-url=http://127.0.0.1:${suite.mockPort}/v1/chat/completions`]), /\/chat\/completions/);
    const { providers } = await suite.ctlJson(['router', 'list-providers']);
    assert.equal(providers.find((p) => p.name === 'bad'), undefined);
    assert.equal(providers.find((p) => p.name === 'mistral').base_url, `http://127.0.0.1:${suite.mockPort}/v1`);
  });

  it('cache writes the upstream reports reach the client and are billed at the cache-write price', { timeout: 30_000 }, async () => {
    const long = [{ role: 'user', content: 'a long and stable system context '.repeat(12) }];
    const r = await client.chat.completions.create({ model: 'compat-cache', messages: long });
    const { prompt_tokens: p, completion_tokens: o } = r.usage;
    const w = r.usage.prompt_tokens_details?.cache_write_tokens;
    assert.equal(w, 40, JSON.stringify(r.usage));
    assert.ok(p > w);
    const cost = Math.ceil(((p - w) * IN + w * CACHE_WRITE + o * OUT) / 1e6);
    const asInput = Math.ceil((p * IN + o * OUT) / 1e6);
    assert.ok(cost > asInput, 'a cache write costs more than plain input');
    const row = await waitFor(async () => {
      const rep = await suite.ctlJson(['billing', 'usage-report', `--from-day=${today()}`, `--to-day=${today()}`,
        '--group-by=model', `--user-id=${demoUser}`]);
      return (rep.rows ?? []).find((x) => x.model === 'compat-cache');
    }, { timeoutMs: 10_000, what: 'the usage record' });
    assert.equal(Number(row.prompt_tokens), p);
    assert.equal(Number(row.cache_write_tokens), w);
    assert.equal(Number(row.cost_micros), cost);
    const { records } = await suite.ctlJson(['billing', 'list-usage-records', `--user-id=${demoUser}`, '--limit=1']);
    assert.equal(Number(records[0].record.cache_write_tokens), w);
    assert.equal(Number(records[0].cost_micros), cost);
  });
});
