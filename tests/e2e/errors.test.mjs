// Errors as the openai SDK sees them: the APIError subclass, status, message and an OpenAI-format
// body (validated against ErrorResponse) for 400, 404, 413, 429 and 503, plus an upstream's own
// 4xx passed through. 401 and 403 are in auth.test.mjs. The errors the HTTP server answers itself
// (413, framing 400, unknown paths) come in the dialect of the path: Anthropic's on /v1/messages*
// (@anthropic-ai/sdk), Azure's on /openai/... (AzureOpenAI).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  addMockModel, findSecretsInLogs, keysByName, loadSpec, modelHealth, openaiClient, specPath,
  startSuite, waitFor, waitKeysHealthy,
} from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'hello' }];

describe('errors through the openai SDK', { timeout: 300_000 }, () => {
  let suite;
  let client;
  let OpenAI;
  let spec;

  before(async () => {
    // A short breaker cooldown so the suite recovers quickly after the 503 test.
    suite = await startSuite({ env: { TOLLGATE_ROUTER__BREAKER__COOLDOWN: '2s' } });
    client = await openaiClient(suite);
    ({ default: OpenAI } = await import('openai'));
    spec = await loadSpec();
    await addMockModel(suite, 'mock-429-retry-1');
    await addMockModel(suite, 'mock-400-code-context_length_exceeded');
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  function conforms(t, value) {
    if (!spec) { t.diagnostic(`spec validation skipped: ${specPath} not found`); return; }
    assert.deepEqual(spec.validate('ErrorResponse', value), [], `not an OpenAI ErrorResponse: ${JSON.stringify(value)}`);
  }

  /** Asserts what every SDK error should carry: class, status, the body's message, the request id. */
  function checkApiError(t, err, Class, status) {
    assert.ok(err instanceof Class, `expected ${Class.name}, got ${err?.constructor?.name}: ${err?.message}`);
    assert.ok(err instanceof OpenAI.APIError);
    assert.equal(err.status, status, `status: ${err.message}`);
    assert.equal(typeof err.error?.message, 'string');
    assert.ok(err.error.message.length > 0, 'empty error message');
    assert.ok(err.message.includes(err.error.message), `SDK message "${err.message}" lacks the body's "${err.error.message}"`);
    assert.ok(err.headers?.get('x-request-id'), 'x-request-id on the error');
    conforms(t, { error: err.error });
    return true;
  }

  async function raw(body, headers = {}) {
    const res = await fetch(`${suite.baseURL}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-e2e', ...headers },
      body,
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { assert.fail(`${res.status} body is not JSON: ${text.slice(0, 300)}`); }
    return { res, json };
  }

  it('400: malformed JSON (raw fetch)', { timeout: 20_000 }, async (t) => {
    const { res, json } = await raw('{"model": "gpt-4o-mini", "messages": [');
    assert.equal(res.status, 400);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    assert.ok(res.headers.get('x-request-id'));
    conforms(t, json);
    assert.equal(json.error.type, 'invalid_request_error');
  });

  it('400: missing messages / missing model → BadRequestError', { timeout: 20_000 }, async (t) => {
    await assert.rejects(client.chat.completions.create({ model: 'gpt-4o-mini' }), (err) => {
      checkApiError(t, err, OpenAI.BadRequestError, 400);
      assert.equal(err.error.type, 'invalid_request_error');
      assert.equal(err.param, 'messages');
      assert.match(err.error.message, /messages/);
      return true;
    });
    await assert.rejects(client.chat.completions.create({ messages: MESSAGES }), (err) => {
      checkApiError(t, err, OpenAI.BadRequestError, 400);
      assert.equal(err.param, 'model');
      assert.match(err.error.message, /model/);
      return true;
    });
  });

  it('404: unknown model → NotFoundError, code model_not_found', { timeout: 20_000 }, async (t) => {
    await assert.rejects(client.chat.completions.create({ model: 'no-such-model-e2e', messages: MESSAGES }), (err) => {
      checkApiError(t, err, OpenAI.NotFoundError, 404);
      assert.equal(err.code, 'model_not_found');
      assert.match(err.error.message, /no-such-model-e2e/);
      return true;
    });
    await assert.rejects(client.embeddings.create({ model: 'no-such-embedding-e2e', input: 'x', encoding_format: 'float' }), (err) => {
      checkApiError(t, err, OpenAI.NotFoundError, 404);
      assert.equal(err.code, 'model_not_found');
      return true;
    });
  });

  it('413: request body too large (raw fetch)', { timeout: 20_000 }, async (t) => {
    // The default limit is 4 MiB: send 5 MiB of valid JSON.
    const big = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'a'.repeat(5 * 1024 * 1024) }] });
    const before = (await suite.stats()).total;
    const { res, json } = await raw(big);
    assert.equal(res.status, 413);
    conforms(t, json);
    assert.equal(json.error.type, 'invalid_request_error');
    assert.equal((await suite.stats()).total, before, 'the upstream was called for a rejected body');
  });

  it('400: deeply nested JSON is refused before anything walks it, and the edge lives on', { timeout: 30_000 }, async (t) => {
    // The outside review's reproductions: 50,000 levels in a message's content without a valid
    // key (a recursive count overflowed the stack), 300,000 levels in metadata with the demo key
    // (the serialiser did, rewriting the body).
    const deep = (n) => '['.repeat(n) + ']'.repeat(n);
    const bodies = [
      [`{"model":"x","messages":[{"content":${deep(50_000)}}]}`, 'Bearer sk-e2e'],
      [`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata":${deep(300_000)}}`,
        `Bearer ${suite.demoKey}`],
    ];
    const before = (await suite.stats()).total;
    for (const [body, authorization] of bodies) {
      const { res, json } = await raw(body, { authorization });
      assert.equal(res.status, 400);
      conforms(t, json);
      assert.equal(json.error.type, 'invalid_request_error');
      assert.match(json.error.message, /64 levels/);
    }
    assert.equal((await suite.stats()).total, before, 'the upstream was called');
    const ok = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
    assert.ok(ok.choices[0].message.content);
  });

  it("upstream's own 4xx body is passed through (context_length_exceeded → BadRequestError)", { timeout: 20_000 }, async (t) => {
    await assert.rejects(client.chat.completions.create({ model: 'mock-400-code-context_length_exceeded', messages: MESSAGES }), (err) => {
      checkApiError(t, err, OpenAI.BadRequestError, 400);
      assert.equal(err.code, 'context_length_exceeded');
      assert.equal(err.param, 'messages');
      return true;
    });
  });

  it('429: every key rate limited, failover exhausted → RateLimitError', { timeout: 30_000 }, async (t) => {
    await waitKeysHealthy(suite);
    const before = await suite.stats();
    await assert.rejects(client.chat.completions.create({ model: 'mock-429-retry-1', messages: MESSAGES }), (err) => {
      checkApiError(t, err, OpenAI.RateLimitError, 429);
      t.diagnostic(`429 body: ${JSON.stringify(err.error)}; retry-after: ${err.headers.get('retry-after')}`);
      return true;
    });
    const s = await suite.stats();
    for (const k of ['mock-key-a', 'mock-key-b']) {
      assert.ok((s.by_key[k] ?? 0) > (before.by_key[k] ?? 0), `failover did not try ${k}: ${JSON.stringify(s.by_key)}`);
    }
    // The router cools both keys down for that model for the retry-after (1 s), then they are
    // used again.
    await waitFor(async () => {
      const keys = Object.values(await keysByName(suite));
      return keys.every((k) => Number(modelHealth(k, 'mock-429-retry-1').rate_limited_until_ms) > 0);
    }, { timeoutMs: 3000, what: 'both keys to be marked rate limited for the model' });
    await waitKeysHealthy(suite);
  });

  it('503: no healthy upstream (every key failing) → status 503', { timeout: 40_000 }, async (t) => {
    await waitKeysHealthy(suite);
    await suite.setKeyBehavior('mock-key-a', { status: 500 });
    await suite.setKeyBehavior('mock-key-b', { status: 500 });
    const seen = [];
    let got503 = null;
    try {
      // Each request fails on both keys (502) until both breakers open; then no upstream is healthy.
      for (let i = 0; i < 15 && !got503; i++) {
        try {
          await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
          seen.push(200);
        } catch (err) {
          assert.ok(err instanceof OpenAI.APIError, `${err?.constructor?.name}: ${err?.message}`);
          seen.push(err.status);
          if (err.status === 503) got503 = err;
          else await new Promise((r) => setTimeout(r, 50)); // let the edge report the outcomes
        }
      }
      assert.ok(got503, `no 503 after ${seen.length} requests with every key answering 500: statuses ${seen.join(',')}`);
      assert.ok(seen.every((s) => s === 502 || s === 503), `statuses ${seen.join(',')}`);
      checkApiError(t, got503, OpenAI.InternalServerError, 503);
      assert.equal(got503.error.type, 'api_error');
      // The edge's own breakers decided (local routing); the router's view follows with the
      // outcomes the edge reports in batches (edge.outcome_flush_interval).
      let keys;
      try {
        await waitFor(async () => {
          keys = await keysByName(suite);
          return modelHealth(keys['mock-a'], 'gpt-4o-mini').state === 'BREAKER_STATE_OPEN' &&
            modelHealth(keys['mock-b'], 'gpt-4o-mini').state === 'BREAKER_STATE_OPEN';
        }, { timeoutMs: 2000, intervalMs: 50, what: "the router's view of both keys' breakers for the model open" });
      } finally {
        t.diagnostic(`statuses ${seen.join(',')}; by_key ${JSON.stringify((await suite.stats()).by_key)}; keys ${JSON.stringify(Object.values(keys ?? {}).map((k) => [k.name, k.health]))}; now ${Date.now()}`);
      }
    } finally {
      await suite.setKeyBehavior('mock-key-a', {});
      await suite.setKeyBehavior('mock-key-b', {});
    }
    // After the cooldown the keys are tried again and the model answers.
    await waitFor(async () => {
      try { await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }); return true; } catch { return false; }
    }, { timeoutMs: 10_000, intervalMs: 250, what: 'the model to answer again after the breaker cooldown' });
  });


  describe("the server's own errors in the path's dialect", () => {
    const BIG = 'a'.repeat(5 * 1024 * 1024); // over edge.max_body_bytes (4 MiB)

    /** One raw HTTP/1.1 request over a socket (framing the fetch API would refuse to send). */
    function rawSocket(text) {
      return new Promise((resolve, reject) => {
        const socket = net.connect(Number(new URL(suite.edgeURL).port), '127.0.0.1');
        let got = '';
        socket.setTimeout(10_000, () => socket.destroy(new Error('timed out')));
        socket.on('data', (d) => { got += d; });
        socket.on('end', () => resolve(got));
        socket.on('close', () => resolve(got));
        socket.on('error', reject);
        socket.write(text);
      });
    }

    it('Anthropic SDK: an oversized body is 413 request_too_large, typed, before any upstream call', { timeout: 30_000 }, async () => {
      const { default: Anthropic } = await import('@anthropic-ai/sdk');
      const anthropic = new Anthropic({ baseURL: suite.edgeURL, apiKey: suite.demoKey, maxRetries: 0, timeout: 20_000 });
      const before = (await suite.stats()).total;
      await assert.rejects(anthropic.messages.create({ model: 'gpt-4o-mini', max_tokens: 10, messages: [{ role: 'user', content: BIG }] }), (err) => {
        assert.ok(err instanceof Anthropic.APIError, String(err));
        assert.equal(err.status, 413);
        assert.deepEqual(Object.keys(err.error), ['type', 'error']);
        assert.equal(err.error.type, 'error');
        assert.equal(err.error.error.type, 'request_too_large');
        assert.match(err.error.error.message, /too large/);
        return true;
      });
      assert.equal((await suite.stats()).total, before, 'nothing reached the upstream');
    });

    it('Anthropic path: bad framing is 400 invalid_request_error; an unknown path 404 not_found_error', { timeout: 30_000 }, async () => {
      const answer = await rawSocket('POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n'
        + 'Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n');
      assert.match(answer, /^HTTP\/1\.1 400 /);
      const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4));
      assert.equal(body.type, 'error');
      assert.equal(body.error.type, 'invalid_request_error');
      const res = await fetch(`${suite.edgeURL}/v1/messages/batches`, { method: 'POST', headers: { 'x-api-key': suite.demoKey } });
      assert.equal(res.status, 404);
      assert.deepEqual(await res.json(), { type: 'error', error: { type: 'not_found_error', message: 'Invalid URL (POST /v1/messages/batches)' } });
      // The OpenAI path keeps OpenAI's format for the same framing.
      const openai = await rawSocket('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n'
        + 'Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n');
      assert.match(openai, /^HTTP\/1\.1 400 /);
      assert.equal(JSON.parse(openai.slice(openai.indexOf('\r\n\r\n') + 4)).error.type, 'invalid_request_error');
    });

    it("AzureOpenAI: an oversized body is 413 in Azure's format; an unknown path Azure's 404", { timeout: 30_000 }, async () => {
      const { AzureOpenAI } = await import('openai');
      const azure = new AzureOpenAI({ endpoint: suite.edgeURL, apiKey: suite.demoKey, apiVersion: '2024-10-21',
        deployment: 'gpt-4o-mini', maxRetries: 0, timeout: 20_000 });
      await assert.rejects(azure.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: BIG }] }), (err) => {
        assert.ok(err instanceof OpenAI.APIError, String(err));
        assert.equal(err.status, 413);
        assert.equal(err.code, 'BadRequest', JSON.stringify(err.error));
        assert.equal(err.error.type, 'invalid_request_error');
        return true;
      });
      const res = await fetch(`${suite.edgeURL}/openai/deployments/gpt-4o-mini/nothing?api-version=2024-10-21`, {
        method: 'POST', headers: { 'api-key': suite.demoKey },
      });
      assert.equal(res.status, 404);
      const body = await res.json();
      assert.equal(body.error.code, '404');
      assert.equal(body.error.message, 'Resource not found');
    });
  });

  it('logs hold no upstream secret, admin token or master key', { timeout: 120_000 }, async () => {
    await suite.stop();
    assert.deepEqual(findSecretsInLogs(suite), []);
  });
});
