// The Azure OpenAI API in front of Tollgate (issue #11), with the openai SDK's AzureOpenAI client
// pointed at the edge (endpoint, deployment, apiVersion, key in `api-key`): chat non-streamed and
// streamed, embeddings, the deployment naming the model whatever the body says, an unknown
// deployment (404 DeploymentNotFound in Azure's error format), a missing api-version (400
// BadRequest, as Azure answers), the Bearer form of the key, and the usage recorded under the
// deployment's model.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findSecretsInLogs, loadSpec, specPath, startSuite, waitFor } from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'hello from an Azure client' }];
const API_VERSION = '2024-10-21';
const today = () => new Date().toISOString().slice(0, 10);

describe('Azure OpenAI front door', { timeout: 300_000 }, () => {
  let suite;
  let spec;
  let AzureOpenAI;
  let OpenAI;
  let demoUser;

  before(async () => {
    suite = await startSuite();
    ({ AzureOpenAI, default: OpenAI } = await import('openai'));
    spec = await loadSpec();
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    demoUser = users.find((u) => u.name === 'demo').id;
  }, { timeout: 240_000 });

  after(async () => {
    if (suite) {
      const leaks = findSecretsInLogs(suite);
      await suite.down();
      assert.deepEqual(leaks, [], 'no key in any log');
    }
  }, { timeout: 120_000 });

  const azure = (deployment, opts = {}) => new AzureOpenAI({
    endpoint: suite.edgeURL, apiKey: suite.demoKey, apiVersion: API_VERSION, deployment,
    maxRetries: 0, timeout: 20_000, ...opts,
  });

  function conforms(t, name, value) {
    if (!spec) { t.diagnostic(`spec validation skipped: ${specPath} not found`); return; }
    assert.deepEqual(spec.validate(name, value), [], `${name} does not match the OpenAI spec:\n${JSON.stringify(value).slice(0, 2000)}`);
  }

  /** usage-report rows of the demo user for today, grouped by model: {model: row}. */
  async function usageByModel() {
    const r = await suite.ctlJson(['billing', 'usage-report', `--from-day=${today()}`, `--to-day=${today()}`,
      '--group-by=model', `--user-id=${demoUser}`]);
    return Object.fromEntries((r.rows ?? []).map((row) => [row.model, row]));
  }

  it('chat, non-streamed: the deployment is the model, the key travels in api-key', { timeout: 30_000 }, async (t) => {
    const { data, response } = await azure('gpt-4o-mini').chat.completions
      .create({ model: 'not-the-deployment', messages: MESSAGES, temperature: 0.3 })
      .withResponse();
    assert.equal(response.status, 200);
    assert.ok(response.headers.get('x-request-id'));
    assert.equal(data.object, 'chat.completion');
    assert.ok(data.choices[0].message.content.length > 0);
    assert.ok(data.usage.prompt_tokens > 0 && data.usage.completion_tokens > 0);
    conforms(t, 'CreateChatCompletionResponse', data);
    // Upstream: the seeded openai-compatible mock, asked for the deployment's model.
    const last = await suite.mockLast();
    assert.equal(last.target, '/v1/chat/completions');
    assert.equal(last.body.model, 'gpt-4o-mini');
    assert.equal(last.body.temperature, 0.3);
    assert.match(last.headers.authorization, /^Bearer mock-key-/);
  });

  it('chat, streamed: chunks and the usage chunk when asked for', { timeout: 30_000 }, async (t) => {
    const stream = await azure('gpt-4o-mini').chat.completions.create({
      messages: MESSAGES, stream: true, stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      assert.equal(chunk.object, 'chat.completion.chunk');
      conforms(t, 'CreateChatCompletionStreamResponse', chunk);
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.ok(chunks > 2, `${chunks} chunks`);
    assert.ok(text.length > 0);
    assert.ok(usage && usage.prompt_tokens > 0, JSON.stringify(usage));
  });

  it('embeddings under the deployment', { timeout: 30_000 }, async (t) => {
    const r = await azure('text-embedding-3-small').embeddings.create({ input: ['a', 'b'] });
    assert.equal(r.data.length, 2);
    conforms(t, 'CreateEmbeddingResponse', r);
    assert.equal((await suite.mockLast()).target, '/v1/embeddings');
  });

  it('without a deployment option the SDK puts the body model in the path, also answered', { timeout: 30_000 }, async () => {
    const r = await azure(undefined).chat.completions.create({ model: 'gpt-4o', messages: MESSAGES });
    assert.equal(r.object, 'chat.completion');
    assert.equal((await suite.mockLast()).body.model, 'gpt-4o');
  });

  it('the usage is recorded under the deployment\'s model', { timeout: 30_000 }, async () => {
    const rows = await waitFor(async () => {
      const r = await usageByModel();
      return Number(r['gpt-4o-mini']?.requests) === 2 && Number(r['text-embedding-3-small']?.requests) === 1
        && Number(r['gpt-4o']?.requests) === 1 && r;
    }, { timeoutMs: 10_000, what: 'the usage records' });
    assert.equal(rows['not-the-deployment'], undefined);
    assert.ok(Number(rows['gpt-4o-mini'].cost_micros) > 0, 'priced at the deployment model\'s price');
  });

  it('an unknown deployment is a 404 DeploymentNotFound in Azure\'s format', { timeout: 30_000 }, async () => {
    await assert.rejects(azure('no-such-deployment').chat.completions.create({ messages: MESSAGES }), (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, String(err));
      assert.equal(err.status, 404);
      assert.equal(err.error?.code, 'DeploymentNotFound');
      assert.equal(typeof err.error?.message, 'string');
      return true;
    });
  });

  it('a bad key is a 401 with Azure\'s code', { timeout: 30_000 }, async () => {
    await assert.rejects(azure('gpt-4o-mini', { apiKey: 'sk-tg-not-a-real-key' }).chat.completions.create({ messages: MESSAGES }),
      (err) => {
        assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
        assert.equal(err.error?.code, '401');
        assert.ok(!JSON.stringify(err.error).includes('sk-tg-not-a-real-key'), 'the key is masked');
        return true;
      });
  });

  it('a missing api-version is a 400 BadRequest, as Azure answers', { timeout: 30_000 }, async () => {
    // The SDK always sends api-version, so this goes by hand; Bearer works as well as api-key.
    const before = (await suite.stats()).total;
    const res = await fetch(`${suite.edgeURL}/openai/deployments/gpt-4o-mini/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${suite.demoKey}` },
      body: JSON.stringify({ messages: MESSAGES }),
    });
    assert.equal(res.status, 400);
    const body = await res.json();
    assert.equal(body.error.code, 'BadRequest');
    assert.match(body.error.message, /api-version/);
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal((await suite.stats()).total, before, 'nothing went upstream');

    const bearer = await fetch(`${suite.edgeURL}/openai/deployments/gpt-4o-mini/chat/completions?api-version=${API_VERSION}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${suite.demoKey}` },
      body: JSON.stringify({ messages: MESSAGES }),
    });
    assert.equal(bearer.status, 200);
    assert.equal((await bearer.json()).object, 'chat.completion');
  });

  it('a path Azure does not serve is Azure\'s 404, a wrong method too', { timeout: 30_000 }, async () => {
    const res = await fetch(`${suite.edgeURL}/openai/deployments/gpt-4o-mini/chat/completions?api-version=${API_VERSION}`, {
      headers: { 'api-key': suite.demoKey },
    });
    assert.equal(res.status, 404);
    assert.equal((await res.json()).error.code, '404');
  });
});
