// API keys through the edge with the openai SDK: a bad or missing key → AuthenticationError
// (401 invalid_api_key, the key masked), a model outside the key's allowlist →
// PermissionDeniedError (403) and absent from /v1/models, a disabled user / expired key / client
// address outside the allowlist → 403 saying which, Azure's api-key header, a revoked key refused
// within the documented bound (1 s), last-used times, and no API key in any log line.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ctlBin, findSecretsInLogs, openaiClient, run, sleep, startSuite, waitFor } from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'who am I?' }];
const REVOCATION_BOUND_MS = 1000; // documented in docs/architecture.md ("Auth")

describe('API keys through the edge', { timeout: 300_000 }, () => {
  let suite;
  let OpenAI;
  let userId;
  const created = []; // every key made here, for the log check

  before(async () => {
    // Short batching intervals, so last-used times show up within the test.
    suite = await startSuite({
      env: { TOLLGATE_EDGE__AUTH_USAGE_FLUSH_INTERVAL: '200ms', TOLLGATE_AUTH__LAST_USED_FLUSH_INTERVAL: '200ms' },
    });
    ({ default: OpenAI } = await import('openai'));
    const { users } = await suite.ctlJson(['auth', 'list-users']);
    userId = users.find((u) => u.name === 'demo').id;
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  /** A new key for `user` (default: the demo user) via tollgatectl; returns {key, id}. */
  async function newKey(flags = [], user = userId) {
    const r = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${user}`, '--name=e2e', ...flags]);
    assert.match(r.api_key, /^sk-tg-[0-9A-Za-z]{43}$/);
    created.push(r.api_key);
    return { key: r.api_key, id: r.key.id };
  }

  const chatWith = async (apiKey, model = 'gpt-4o-mini') =>
    (await openaiClient(suite, { apiKey })).chat.completions.create({ model, messages: MESSAGES });

  async function rejects(promise, Class, status, check = () => {}) {
    await assert.rejects(promise, (err) => {
      assert.ok(err instanceof Class, `expected ${Class.name}, got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, status);
      check(err);
      return true;
    });
  }

  it('the launcher seeded a demo key that works, kept mode 600', { timeout: 20_000 }, async () => {
    const mode = fs.statSync(path.join(suite.stateDir, 'secrets/demo_api_key')).mode & 0o777;
    assert.equal(mode.toString(8), '600');
    const r = await chatWith(suite.demoKey);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const { keys } = await suite.ctlJson(['auth', 'list-api-keys', `--user-id=${userId}`]);
    const demo = keys.find((k) => suite.demoKey.startsWith(k.display_prefix.replace(/\.\.\.$/, '')));
    assert.ok(demo, `demo key not listed: ${JSON.stringify(keys)}`);
    assert.equal(demo.status, 'KEY_STATUS_ACTIVE');
    assert.ok(!JSON.stringify(keys).includes(suite.demoKey), 'the listing never shows a key');
  });

  it('bad key → AuthenticationError 401 invalid_api_key, the key masked', { timeout: 20_000 }, async () => {
    const bad = `sk-tg-${'x'.repeat(41)}yz`;
    await rejects(chatWith(bad), OpenAI.AuthenticationError, 401, (err) => {
      assert.equal(err.code, 'invalid_api_key');
      assert.match(err.error.message, /^Incorrect API key provided: sk-tg-xx\*\*\*yz\./);
      assert.ok(!err.message.includes(bad), 'the whole key is never echoed');
    });
    await rejects(chatWith('sk-proj-not-a-tollgate-key-at-all-0123'), OpenAI.AuthenticationError, 401);
    await rejects((await openaiClient(suite, { apiKey: bad })).models.list(), OpenAI.AuthenticationError, 401);

    // No key at all (raw: the SDK insists on one).
    const res = await fetch(`${suite.baseURL}/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: MESSAGES }), signal: AbortSignal.timeout(10_000),
    });
    const body = await res.json();
    assert.equal(res.status, 401);
    assert.equal(body.error.code, 'invalid_api_key');
    assert.match(body.error.message, /You didn't provide an API key/);
  });

  it("Azure's api-key header is accepted like Authorization: Bearer", { timeout: 20_000 }, async () => {
    for (const headers of [{ 'api-key': suite.demoKey }, { authorization: `bearer ${suite.demoKey}` }]) {
      const res = await fetch(`${suite.baseURL}/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: MESSAGES }), signal: AbortSignal.timeout(10_000),
      });
      await res.text();
      assert.equal(res.status, 200, JSON.stringify(Object.keys(headers)));
    }
  });

  it('model allowlist: PermissionDeniedError 403 outside it, /v1/models lists only what is allowed', { timeout: 30_000 }, async () => {
    const { key } = await newKey(['--allowed-models=gpt-4o*']);
    const client = await openaiClient(suite, { apiKey: key });
    for (const model of ['gpt-4o', 'gpt-4o-mini']) {
      const r = await client.chat.completions.create({ model, messages: MESSAGES });
      assert.equal(r.choices[0].finish_reason, 'stop', model);
    }
    await rejects(client.embeddings.create({ model: 'text-embedding-3-small', input: 'x' }),
      OpenAI.PermissionDeniedError, 403, (err) => {
        assert.equal(err.code, 'permission_denied');
        assert.equal(err.param, 'model');
        assert.match(err.error.message, /not allowed to use the model 'text-embedding-3-small'/);
      });
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.deepEqual(ids.sort(), ['gpt-4o', 'gpt-4o-mini']);
    await rejects(client.models.retrieve('mock-model'), OpenAI.NotFoundError, 404);
    assert.equal((await client.models.retrieve('gpt-4o')).id, 'gpt-4o');

    // The demo key has no allowlist: it sees every model.
    const all = [];
    for await (const m of (await openaiClient(suite)).models.list()) all.push(m.id);
    assert.ok(all.includes('text-embedding-3-small') && all.includes('mock-model'), all.join(','));
  });

  it('403 saying which: client address not allowed, key expired, user disabled; 401 for a disabled key', { timeout: 30_000 }, async () => {
    const elsewhere = await newKey(['--allowed-cidrs=10.0.0.0/8,2001:db8::/32']);
    await rejects(chatWith(elsewhere.key), OpenAI.PermissionDeniedError, 403,
      (err) => assert.match(err.error.message, /IP address \(127\.0\.0\.1\) are not allowed/));
    const local = await newKey(['--allowed-cidrs=127.0.0.0/8,::1']);
    assert.equal((await chatWith(local.key)).choices[0].finish_reason, 'stop');

    const brief = await newKey(['--ttl-seconds=2']); // whole seconds: valid for 1 to 2 s
    assert.equal((await chatWith(brief.key)).choices[0].finish_reason, 'stop');
    await sleep(2100);
    await rejects(chatWith(brief.key), OpenAI.PermissionDeniedError, 403,
      (err) => assert.match(err.error.message, /expired at \d{4}-\d\d-\d\dT/));

    const paused = await newKey();
    await suite.ctl(['auth', 'update-api-key', `--id=${paused.id}`, '--status=disabled']);
    await rejects(chatWith(paused.key), OpenAI.AuthenticationError, 401, (err) => assert.match(err.error.message, /is disabled/));
    await suite.ctl(['auth', 'update-api-key', `--id=${paused.id}`, '--status=active']);
    assert.equal((await chatWith(paused.key)).choices[0].finish_reason, 'stop');

    const { user } = await suite.ctlJson(['auth', 'create-user', '--name=e2e-disabled']);
    await suite.ctl(['billing', 'create-account', `--user-id=${user.id}`, '--credit-limit-micros=1000000']); // priced models need an account
    const theirs = await newKey([], user.id);
    assert.equal((await chatWith(theirs.key)).choices[0].finish_reason, 'stop');
    await suite.ctl(['auth', 'update-user', `--id=${user.id}`, '--status=disabled']);
    await rejects(chatWith(theirs.key), OpenAI.PermissionDeniedError, 403,
      (err) => assert.match(err.error.message, /belongs to is disabled/));
  });

  it(`a revoked key is refused within ${REVOCATION_BOUND_MS} ms`, { timeout: 30_000 }, async (t) => {
    const figures = [];
    for (let i = 0; i < 3; i++) {
      const { key, id } = await newKey();
      const client = await openaiClient(suite, { apiKey: key });
      await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }); // warm: cached at the edge
      await suite.ctl(['auth', 'revoke-api-key', `--id=${id}`]);
      const t0 = Date.now();
      let refused;
      while (!refused) {
        try {
          await client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
          assert.ok(Date.now() - t0 < 5000, 'still accepted 5 s after the revocation');
        } catch (err) {
          refused = err;
        }
      }
      figures.push(Date.now() - t0);
      assert.ok(refused instanceof OpenAI.AuthenticationError, `${refused?.constructor?.name}: ${refused?.message}`);
      assert.match(refused.error.message, /has been revoked/);
    }
    t.diagnostic(`revoked → refused at the edge, after tollgatectl returned: ${figures.join(', ')} ms`);
    for (const ms of figures) assert.ok(ms <= REVOCATION_BOUND_MS, `${ms} ms`);
  });

  it('last-used times reach the listing (batched)', { timeout: 20_000 }, async () => {
    const { key, id } = await newKey();
    await chatWith(key);
    await waitFor(async () => {
      const { keys } = await suite.ctlJson(['auth', 'list-api-keys', `--user-id=${userId}`]);
      return Number(keys.find((k) => k.id === id)?.last_used_at ?? 0) > 0;
    }, { timeoutMs: 10_000, what: 'last_used_at of the key just used' });
  });

  it('tollgatectl audit merges the audit logs of all four services, never holding a key', { timeout: 30_000 }, async () => {
    const services = ['auth', 'quota', 'router', 'billing'];
    const addrs = services.map((s, i) => `--${s}-addr=127.0.0.1:${suite.ports.grpcBase + i}`);
    const ctl = (args) => run(ctlBin, [
      `--admin-token-file=${path.join(suite.stateDir, 'secrets/admin_token')}`, '--actor=e2e-auditor', ...args,
    ], { env: suite.env });
    // The launcher's seed audited auth, router and billing; a change of our own for quota.
    const set = await ctl([`--addr=127.0.0.1:${suite.ports.grpcBase + 1}`, 'quota', 'set-policy',
      '--subject-kind=key', '--subject=e2e-audit', '--rpm=1000']);
    assert.equal(set.code, 0, set.stderr);
    const { key, id } = await newKey();

    const r = await ctl(['--json', 'audit', '--limit=1000', ...addrs]);
    assert.equal(r.code, 0, r.stderr);
    const entries = JSON.parse(r.stdout);
    assert.deepEqual([...new Set(entries.map((e) => e.service))].sort(), [...services].sort());
    for (let i = 1; i < entries.length; i++) assert.ok(entries[i - 1].at_ms >= entries[i].at_ms, 'newest first');
    const policy = entries.find((e) => e.service === 'quota' && e.action === 'set_policy');
    assert.equal(policy?.target, 'policy:key:e2e-audit');
    assert.match(policy.actor, /^e2e-auditor \(/);
    assert.equal(policy.details.rpm, '1000');
    assert.ok(entries.some((e) => e.service === 'auth' && e.action === 'create_api_key' && e.target === `api_key:${id}`));
    assert.ok(entries.some((e) => e.service === 'router' && e.action === 'create_upstream_key'));
    assert.ok(entries.some((e) => e.service === 'billing' && e.action === 'top_up'));
    for (const secret of [key, suite.demoKey, suite.adminToken]) assert.ok(!r.stdout.includes(secret));

    // One service unreachable: named on stderr, the others still printed, exit 1.
    const partial = await ctl(['--csv', 'audit', '--limit=5', ...addrs.slice(0, 3), '--billing-addr=127.0.0.1:1']);
    assert.equal(partial.code, 1);
    assert.match(partial.stderr, /audit: billing: unavailable/);
    const lines = partial.stdout.trim().split('\n');
    assert.equal(lines[0], 'service,at,actor,action,target,details');
    assert.equal(lines.length, 6);
  });

  it('no API key, admin token or upstream secret in any log line', { timeout: 20_000 }, async () => {
    await sleep(300); // let the last lines land
    assert.deepEqual(findSecretsInLogs(suite, created), []);
  });
});
