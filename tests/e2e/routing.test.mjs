// The router's key pool seen from outside: failover on 500 with the breaker opening and closing
// again after the cooldown, 429 + retry-after moving traffic to the other key, health per (key,
// model) (a model failing on every key leaves the others alone), smooth weighted selection (3:1
// over 400 requests), and upstream secrets encrypted at rest (psql, pg_dump).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  addMockModel, findSecretsInLogs, keysByName, modelHealth, openaiClient, pool, sleep, startSuite,
  waitFor, waitKeysHealthy,
} from './harness.mjs';

const MESSAGES = [{ role: 'user', content: 'route me' }];
const SECRETS = ['mock-key-a', 'mock-key-b'];
const BREAKER_THRESHOLD = 3; // router.breaker default
const COOLDOWN_MS = 2000; // TOLLGATE_ROUTER__BREAKER__COOLDOWN below

describe('router key pool', { timeout: 300_000 }, () => {
  let suite;
  let client;

  before(async () => {
    suite = await startSuite({ env: { TOLLGATE_ROUTER__BREAKER__COOLDOWN: `${COOLDOWN_MS / 1000}s` } });
    client = await openaiClient(suite);
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  const MODEL = 'gpt-4o-mini'; // routed to the mock provider under the same name
  const chat = () => client.chat.completions.create({ model: MODEL, messages: MESSAGES });
  const byKey = async () => (await suite.stats()).by_key;
  const count = (m, k) => m[k] ?? 0;

  it('failover: one key answering 500 → every request succeeds; its breaker opens, then closes after the cooldown', { timeout: 40_000 }, async (t) => {
    await waitKeysHealthy(suite);
    await suite.resetMock();
    await suite.setKeyBehavior('mock-key-a', { status: 500 });
    try {
      for (let i = 0; i < 20; i++) {
        const r = await chat();
        assert.equal(r.choices[0].finish_reason, 'stop', `request ${i}`);
      }
      const s = await byKey();
      t.diagnostic(`after 20 requests with mock-key-a failing: by_key ${JSON.stringify(s)}`);
      assert.equal(count(s, 'mock-key-b'), 20, 'every request answered by the healthy key');
      assert.ok(count(s, 'mock-key-a') >= BREAKER_THRESHOLD, `the bad key was tried ${count(s, 'mock-key-a')} times`);

      // 5xx open the breaker of (mock-a, the model), not mock-a's own.
      const a = (await waitFor(async () => {
        const k = (await keysByName(suite))['mock-a'];
        return modelHealth(k, MODEL).state === 'BREAKER_STATE_OPEN' ? k : null;
      }, { timeoutMs: 1500, intervalMs: 50, what: "mock-a's breaker for the model to open" }));
      t.diagnostic(`mock-a health: ${JSON.stringify(a.health)}`);
      const aModel = modelHealth(a, MODEL);
      assert.ok(aModel.consecutive_failures >= BREAKER_THRESHOLD);
      assert.ok(Number(aModel.breaker_open_until_ms) > Date.now());
      assert.equal(a.health.state, 'BREAKER_STATE_CLOSED', 'the key itself stays closed');
      const b = (await keysByName(suite))['mock-b'];
      assert.equal(modelHealth(b, MODEL).state, 'BREAKER_STATE_CLOSED');

      // While open, the bad key is not tried at all.
      const openUntil = Number(aModel.breaker_open_until_ms);
      const tried = count(await byKey(), 'mock-key-a');
      for (let i = 0; i < 5; i++) await chat();
      if (Date.now() < openUntil - 100) assert.equal(count(await byKey(), 'mock-key-a'), tried, 'an open key was tried');
    } finally {
      await suite.setKeyBehavior('mock-key-a', {});
    }

    // Recovered: after the cooldown, one trial request (half-open) closes the breaker again.
    const openUntil = Number(modelHealth((await keysByName(suite))['mock-a'], MODEL).breaker_open_until_ms);
    await sleep(Math.max(0, openUntil - Date.now()) + 100);
    const tried = count(await byKey(), 'mock-key-a');
    for (let i = 0; i < 6; i++) await chat();
    assert.ok(count(await byKey(), 'mock-key-a') > tried, 'the recovered key was not tried after the cooldown');
    const closed = await waitFor(async () => {
      const m = modelHealth((await keysByName(suite))['mock-a'], MODEL);
      return m.state === 'BREAKER_STATE_CLOSED' ? m : null;
    }, { timeoutMs: 3000, what: "mock-a's breaker to close after a successful trial" });
    assert.equal(closed.consecutive_failures, 0);
  });

  it('429 with retry-after on one key → traffic moves to the other', { timeout: 30_000 }, async (t) => {
    await waitKeysHealthy(suite);
    await suite.resetMock();
    await suite.setKeyBehavior('mock-key-a', { status: 429, retry_after: 4 });
    try {
      // Two requests: smooth round-robin gives mock-key-a the first attempt of one of them.
      await chat();
      await chat();
      const first = await byKey();
      assert.ok(count(first, 'mock-key-a') >= 1, `mock-key-a never tried: ${JSON.stringify(first)}`);
      // Once the outcome has reached the router (batched every 100 ms), the key is cooling down
      // for this model.
      const a = await waitFor(async () => {
        const m = modelHealth((await keysByName(suite))['mock-a'], MODEL);
        return Number(m.rate_limited_until_ms) > Date.now() ? m : null;
      }, { timeoutMs: 2000, what: 'mock-key-a to be marked rate limited' });
      const until = Number(a.rate_limited_until_ms);
      t.diagnostic(`mock-a rate limited for another ${until - Date.now()} ms (retry-after 4 s)`);
      assert.ok(until - Date.now() <= 4000 + 500, 'cooled down for longer than retry-after');
      const triedA = count(await byKey(), 'mock-key-a');
      const triedB = count(await byKey(), 'mock-key-b');
      for (let i = 0; i < 20; i++) await chat();
      const s = await byKey();
      t.diagnostic(`by_key ${JSON.stringify(s)}`);
      if (Date.now() < until - 100) assert.equal(count(s, 'mock-key-a'), triedA, 'a rate-limited key got traffic');
      assert.equal(count(s, 'mock-key-b'), triedB + 20, 'every request went to the other key');
    } finally {
      await suite.setKeyBehavior('mock-key-a', {});
    }
    // After the retry-after the key is used again.
    await waitKeysHealthy(suite);
    const before = count(await byKey(), 'mock-key-a');
    for (let i = 0; i < 4; i++) await chat();
    assert.ok(count(await byKey(), 'mock-key-a') > before, 'mock-key-a not used again after its retry-after');
  });

  it('one model failing on both keys never refuses another model on the same keys (health per key and model)', { timeout: 60_000 }, async (t) => {
    // Two failing models served by the same two keys as MODEL: one answering 429 with
    // retry-after 2 s (both keys cool down for it), one answering 500 (three open its breaker
    // for COOLDOWN_MS). When health was kept per key, either took both keys away from every
    // model: MODEL, asked meanwhile, got 503 no_healthy_upstream.
    const RATE_LIMITED = 'mock-429-retry-2';
    const FAILING = 'mock-fail-500';
    await waitKeysHealthy(suite);
    await addMockModel(suite, RATE_LIMITED);
    await addMockModel(suite, FAILING);
    const modelFailures = (keys, name) => Number(modelHealth(keys[name], MODEL).failures ?? 0);
    const before = await keysByName(suite);
    const failing = {}; // "model status" → count
    const healthy = []; // MODEL's statuses
    try {
      const deadline = Date.now() + 5000;
      const hammer = async (model) => {
        while (Date.now() < deadline) {
          let status = 200;
          try { await client.chat.completions.create({ model, messages: MESSAGES }); } catch (e) { status = e.status ?? String(e); }
          failing[`${model} ${status}`] = (failing[`${model} ${status}`] ?? 0) + 1;
          await sleep(10);
        }
      };
      const serve = async () => {
        while (Date.now() < deadline) {
          try { await chat(); healthy.push(200); } catch (e) { healthy.push(`${e.status ?? ''} ${e.error?.code ?? e.message}`); }
        }
      };
      await Promise.all([hammer(RATE_LIMITED), hammer(RATE_LIMITED), hammer(FAILING), hammer(FAILING), serve(), serve()]);
      t.diagnostic(`failing models: ${JSON.stringify(failing)}; ${MODEL}: ${healthy.length} requests`);
      assert.deepEqual(healthy.filter((s) => s !== 200), [], `${MODEL} was refused while other models failed on its keys`);
      assert.ok(healthy.length >= 20, `only ${healthy.length} requests of ${MODEL}`);
      // The failing models really had both keys out for themselves meanwhile.
      assert.ok(failing[`${RATE_LIMITED} 429`] > 0, `${RATE_LIMITED} never answered 429`);
      assert.ok(failing[`${RATE_LIMITED} 503`] > 0, `both keys never cooled down for ${RATE_LIMITED}`);
      assert.ok(failing[`${FAILING} 503`] > 0, `the breakers for ${FAILING} never opened on both keys`);
      // The router's view agrees: the keys themselves never opened, the failing models did.
      const keys = await keysByName(suite);
      for (const name of ['mock-a', 'mock-b']) {
        t.diagnostic(`${name}: ${JSON.stringify(keys[name].health)}`);
        assert.equal(keys[name].health.state, 'BREAKER_STATE_CLOSED', `${name} itself opened`);
        assert.ok(Number(keys[name].health.rate_limited_until_ms) === 0, `${name} itself cooled down`);
        assert.ok(Number(modelHealth(keys[name], FAILING).failures ?? 0) > 0, `${name}: no failure counted for ${FAILING}`);
        assert.equal(modelFailures(keys, name), modelFailures(before, name), `${name}: failures counted for ${MODEL}`);
      }
    } finally {
      // Deleting the models drops their health (per-model entries follow the catalogue).
      for (const m of [RATE_LIMITED, FAILING]) await suite.ctl(['router', 'delete-model', `--name=${m}`]);
    }
    const keys = await keysByName(suite);
    for (const name of ['mock-a', 'mock-b']) {
      const models = keys[name].health.models.map((m) => m.upstream_model);
      assert.ok(!models.includes(FAILING) && !models.includes(RATE_LIMITED), `${name} still lists ${models}`);
    }
  });

  it('weighted selection: weights 3:1 → a 3:1 split over 400 requests', { timeout: 60_000 }, async (t) => {
    await waitKeysHealthy(suite);
    const keys = await keysByName(suite);
    await suite.ctl(['router', 'update-upstream-key', `--id=${keys['mock-a'].id}`, '--weight=3']);
    try {
      assert.equal((await keysByName(suite))['mock-a'].weight, 3);
      // The edge plans from the router's table, polled every edge.routing_refresh (1 s).
      await sleep(1500);
      await suite.resetMock();
      const statuses = await pool(400, 4, async () => {
        try { await chat(); return 200; } catch (e) { return e.status ?? String(e); }
      });
      assert.deepEqual(statuses.filter((s) => s !== 200), [], 'every request succeeds');
      const s = await byKey();
      const a = count(s, 'mock-key-a');
      const b = count(s, 'mock-key-b');
      t.diagnostic(`split: mock-key-a ${a}, mock-key-b ${b}`);
      assert.equal(a + b, 400);
      assert.ok(Math.abs(a / 400 - 0.75) <= 0.03, `share of the weight-3 key: ${(a / 4).toFixed(1)}% (want 75 ± 3%)`);
    } finally {
      await suite.ctl(['router', 'update-upstream-key', `--id=${keys['mock-a'].id}`, '--weight=1']);
    }
  });

  it('keys at rest: the router table and a dump hold no plaintext secret', { timeout: 30_000 }, async () => {
    const table = await suite.psql('tollgate_router', 'select * from upstream_keys');
    assert.match(table, /\(2 rows\)/, `expected the two seeded keys:\n${table}`);
    const dump = await suite.pgDump('tollgate_router');
    assert.ok(dump.includes('upstream_keys'), 'the dump has the upstream_keys table');
    for (const secret of SECRETS) {
      const forms = {
        plaintext: secret,
        hex: Buffer.from(secret).toString('hex'),
        base64: Buffer.from(secret).toString('base64').replace(/=+$/, ''),
      };
      for (const [form, needle] of Object.entries(forms)) {
        assert.ok(!table.toLowerCase().includes(needle.toLowerCase()), `${secret} (${form}) in upstream_keys:\n${table}`);
        assert.ok(!dump.toLowerCase().includes(needle.toLowerCase()), `${secret} (${form}) in pg_dump tollgate_router`);
      }
    }
    // No admin RPC returns the secret either.
    const listed = JSON.stringify(await suite.ctlJson(['router', 'list-upstream-keys']));
    for (const secret of SECRETS) assert.ok(!listed.includes(secret), `list-upstream-keys returns ${secret}`);
  });

  it('logs hold no upstream secret, admin token or master key', { timeout: 120_000 }, async () => {
    await suite.stop();
    assert.deepEqual(findSecretsInLogs(suite), []);
  });
});
