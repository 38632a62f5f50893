// kill -9 of an edge holding grants (issue #13, exactness), with real processes: the suite runs
// split (one process per target) plus a second edge process, edge B (suite.startExtraEdge),
// sharing auth, quota, router and billing with the suite's edge A. In each phase edge B takes
// traffic until it holds its grants (quota leases in phases 1 and 3, a billing budget in phase 2)
// and is SIGKILLed under that load, then restarted (its spool replays), while edge A takes what
// is left. Requests go through the
// openai SDK; every answer's x-request-id is billing's request id (the client sends none), so the
// accounting is per request, not by counts alone.
//
// Phase 1, a key with RPM = N (one sliding minute; the whole phase is well inside 60 s):
//   - 200s from A + 200s from B ≤ N: the dead edge's lease keeps counting in the window
//     (docs/architecture.md "Quota", Leases: its entry counts until U + 60 s), so nothing is
//     admitted twice;
//   - the under-admission (N − every 200) is at most what B's leases held unused plus what it
//     had in flight, each lease ≤ 1/8 of the headroom: measured and printed. RPM capacity comes
//     back when the dead lease's entry leaves the window (U + 60 s, by design; not waited for).
// Phase 2, a user whose prepaid balance covers exactly M requests (input price 0, max_tokens =
// the mock's answer length, so every request's worst case = its cost = W):
//   - B's dead budget stays held until it expires (billing.budget_ttl + billing.hold_ttl after
//     its last refill; hold_ttl lowered to HOLD_TTL_MS here): A is refused while it counts, then
//     spends the rest; at the end less than W is left and the balance never went below zero;
//   - every 200 is charged at most once (usage_records unique per request id, the account's total
//     cost = the sum of its records), every 200 from A is charged, and a 200 from B that is not
//     charged was answered at the kill: the record is written into the spool (page cache, which
//     a SIGKILL does not lose) as the answer ends, so only an answer whose last bytes left in
//     the microseconds before that write can lose it (docs/architecture.md, grpc_billing_client.cpp
//     + spool.cpp), asserted with RECORD_LOSS_WINDOW_MS of slack for the test's own clock and
//     printed.
// Phase 3, a key with a daily token quota D (quota.reservation_ttl lowered to
// RESERVATION_TTL_MS):
//   - settled + reserved ≤ D throughout; B's dead lease keeps its tokens reserved until
//     U + reservation_ttl (U ≤ the kill + lease_ttl), A is refused meanwhile, then uses them: at
//     the end less than one request's estimate is left;
//   - quota's settled total = the tokens of the answers it settled (settled_requests), every
//     answer of A among them. A settlement is written into the edge's settlement journal
//     (<spool_dir>/quota) as the answer ends, and B's restart sends what it never had
//     acknowledged, so an answer never settled can only be one that ended at the very moment of
//     the kill (RECORD_LOSS_WINDOW_MS); served tokens over D are printed (servedOverQuota) and
//     are those answers' at most (docs/architecture.md "Quota", Leases).
// In every phase B also has SLOW requests admitted and at the upstream when it dies: they end
// without an answer and are never charged. Every phase checks the records after B's restart
// replayed its spool (B restarted within the hold's life, so its late records are charged
// against money still held).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addMockModel, sleep, startSuite, waitFor } from './harness.mjs';

const MODEL = 'mock-edge-kill'; // a plain mock model: 10 words, at once
const SLOW_MODEL = 'mock-edge-kill-slow-ttfb-5000'; // answers after 5 s: in flight at the kill
const SLOW = 2; // slow requests B has admitted and sent upstream when it dies (legacy completions,
const SLOW_PATH = '/v1/completions'; // so the mock's count per path shows them arrive)
const SLOW_AFTER = 10; // B sends them after this many attempts (its grants have come by then)
const MAX_TOKENS = 10; // = the mock's answer: cost = worst case
const MESSAGES = [{ role: 'user', content: 'edge kill' }];
const PRICE_OUT = 1_000_000_000; // micro-units per 1M completion tokens: 1,000 a token
const W = MAX_TOKENS * PRICE_OUT / 1_000_000; // every request's worst case and cost: 10,000
const CONC = 4; // requests in flight per edge
const RPM = 200; // phase 1: leases need a headroom ≥ quota.lease_min_headroom (64)
const KILL_AFTER_Q = 30; // phase 1: B dies after this many 200s
const M = 150; // phase 2: the balance covers exactly M requests
const KILL_AFTER_B = 15; // phase 2: B dies after this many 200s
const BUDGET_MIN_HEADROOM = 200_000; // billing.budget_min_headroom: budgets until 20 requests are left
const DAILY = 1_500; // phase 3: the key's daily tokens (a request's estimate is about 40, its actual 13)
const KILL_AFTER_T = 15; // phase 3: B dies after this many 200s
const RESERVATION_TTL_MS = 9_000; // quota.reservation_ttl: a dead lease's tokens count until U + this
const LEASE_TTL_MS = 1_000; // quota.lease_ttl (the default)
const BUDGET_TTL_MS = 1_000;
const HOLD_TTL_MS = 8_000; // how long billing counts a dead edge's budget after its last refill
const RECORD_LOSS_WINDOW_MS = 25; // records and settlements are written as their answer ends: slack for node's clock
const REFUSALS_TO_STOP = 6; // an edge's concurrent load ends after this many refusals in a row
const SETTLE_PAUSE_MS = 300; // then more such rounds, this far apart, until one admits nothing

describe('kill -9 of an edge holding leases and budgets, two edge processes', { timeout: 300_000 }, () => {
  let suite;
  let edgeB;
  let OpenAI;

  before(async () => {
    suite = await startSuite({
      split: true,
      env: {
        TOLLGATE_BILLING__BUDGET_TTL: `${BUDGET_TTL_MS / 1000}s`,
        TOLLGATE_BILLING__HOLD_TTL: `${HOLD_TTL_MS / 1000}s`,
        TOLLGATE_BILLING__BUDGET_MIN_HEADROOM: String(BUDGET_MIN_HEADROOM),
        TOLLGATE_QUOTA__RESERVATION_TTL: `${RESERVATION_TTL_MS / 1000}s`,
      },
    });
    edgeB = await suite.startExtraEdge('edge-b');
    ({ default: OpenAI } = await import('openai'));
    for (const model of [MODEL, SLOW_MODEL]) {
      await suite.ctl(['billing', 'set-price', `--model=${model}`, '--input-micros-per-mtok=0',
        `--output-micros-per-mtok=${PRICE_OUT}`]);
      await addMockModel(suite, model);
    }
    for (const base of [suite.baseURL, edgeB.baseURL]) {
      await waitFor(async () => {
        const res = await fetch(`${base}/models`, { headers: { authorization: `Bearer ${suite.demoKey}` } });
        const ids = res.ok ? (await res.json()).data.map((m) => m.id) : [];
        return ids.includes(MODEL) && ids.includes(SLOW_MODEL);
      }, { timeoutMs: 10_000, what: `${base} to serve ${MODEL}` });
    }
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  async function metric(url, name, labels = '') {
    const text = await (await fetch(url, { signal: AbortSignal.timeout(5000) })).text();
    const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}}` : `${name} `));
    return line ? Number(line.split(' ').pop()) : 0;
  }
  const serviceMetrics = (i) => `http://127.0.0.1:${suite.ports.metrics + i}/metrics`; // 2 quota, 4 billing

  async function newUser(name, topUp) {
    const userId = (await suite.ctlJson(['auth', 'create-user', `--name=${name}`])).user.id;
    const r = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${userId}`, `--name=${name}`]);
    await suite.ctl(['billing', 'create-account', `--user-id=${userId}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${userId}`, `--amount-micros=${topUp}`]);
    return { userId, key: r.api_key, keyId: r.key.id };
  }

  /**
   * Load through one edge: CONC requests at a time until stop() says so or REFUSALS_TO_STOP
   * refusals in a row, then (unless stopped) such rounds until one admits nothing; through B,
   * also SLOW slow requests once SLOW_AFTER were sent. Every attempt lands in `log`: {edge,
   * model, status (0: no HTTP answer), code, id (x-request-id), tokens, sentAt, doneAt}.
   */
  async function load(edgeName, baseURL, key, log, stop) {
    const client = new OpenAI({ baseURL, apiKey: key, maxRetries: 0, timeout: 20_000 });
    let refusedInRow = 0;
    const one = async (model = MODEL) => {
      const e = { edge: edgeName, model, sentAt: Date.now() };
      log.push(e);
      try {
        const { data, response } = await (model === SLOW_MODEL
          ? client.completions.create({ model, prompt: 'edge kill', max_tokens: MAX_TOKENS })
          : client.chat.completions.create({ model, messages: MESSAGES, max_tokens: MAX_TOKENS })).withResponse();
        e.status = response.status;
        e.id = response.headers.get('x-request-id');
        e.tokens = data.usage.total_tokens;
        refusedInRow = 0;
      } catch (err) {
        e.status = err instanceof OpenAI.APIError && err.status ? err.status : 0;
        e.code = err.code ?? err.cause?.code ?? err.message;
        if (e.status === 429) refusedInRow++;
      }
      e.doneAt = Date.now();
      return e;
    };
    let admitted = 0;
    const worker = async () => {
      while (!stop() && refusedInRow < REFUSALS_TO_STOP) {
        if ((await one()).status === 200) admitted++;
      }
    };
    const slow = edgeName === 'B' ? waitFor(() => stop() || log.length >= SLOW_AFTER, { timeoutMs: 30_000, intervalMs: 5 })
      .then(() => Promise.all(Array.from({ length: SLOW }, () => one(SLOW_MODEL)))) : null;
    await Promise.all([...Array.from({ length: CONC }, worker), slow]);
    // Rounds until one admits nothing: each after a pause in which records land and idle leases
    // and budgets go back, so refusals of requests racing each other (or this edge's own lease
    // or budget) do not end the load while capacity is left.
    while (!stop() && admitted > 0) {
      await sleep(SETTLE_PAUSE_MS);
      admitted = 0;
      refusedInRow = 0;
      await Promise.all(Array.from({ length: CONC }, worker));
    }
  }

  async function records(userId) {
    const out = await suite.psql('tollgate_billing',
      `SELECT request_id || ' ' || cost_micros FROM usage_records WHERE user_id = ${userId}`);
    return out.split('\n').slice(2).map((l) => l.trim()).filter((l) => /^\S+ -?\d+$/.test(l))
      .map((l) => { const [id, cost] = l.split(' '); return { id, cost: Number(cost) }; });
  }
  const account = async (userId) => (await suite.ctlJson(['billing', 'get-balance', `--user-id=${userId}`])).account;

  /**
   * Kills edge B (SIGKILL) once `ready()` holds during its load, restarts it and waits until its
   * spool is delivered. Returns {killAt, restartedAt}.
   */
  async function killAndRestartB(ready, logB, state) {
    const slowBefore = (await suite.stats()).by_path?.[SLOW_PATH] ?? 0;
    await waitFor(ready, { timeoutMs: 30_000, intervalMs: 5, what: 'edge B to hold its grants under load' });
    // B's slow requests were admitted (quota and billing) and reached the upstream.
    await waitFor(async () => ((await suite.stats()).by_path?.[SLOW_PATH] ?? 0) >= slowBefore + SLOW,
      { timeoutMs: 10_000, intervalMs: 5, what: "B's slow requests upstream" });
    state.killAt = Date.now();
    state.inFlightAtKill = logB.filter((e) => e.doneAt === undefined).length;
    await suite.kill9('edge-b');
    state.killed = true;
    await suite.restart('edge-b');
    state.restartedAt = Date.now();
    await waitFor(async () => (await metric(edgeB.metricsURL, 'tollgate_edge_billing_spool', 'what="records"')) === 0,
      { timeoutMs: 10_000, intervalMs: 50, what: "edge B's replayed spool to drain" });
  }

  /** Records vs answers (part c): returns {lost, maxLostAgeMs, recs} after the checks every phase shares. */
  async function checkRecords(label, user, log, state) {
    const slow = log.filter((e) => e.model === SLOW_MODEL);
    assert.equal(slow.length, SLOW);
    assert.ok(slow.every((e) => e.edge === 'B' && e.status === 0 && e.doneAt >= state.killAt),
      `${label}: B's slow requests did not die with it: ${JSON.stringify(slow)}`);
    const ok = log.filter((e) => e.status === 200);
    const fromA = ok.filter((e) => e.edge === 'A');
    const fromB = ok.filter((e) => e.edge === 'B');
    let recs;
    await waitFor(async () => {
      recs = await records(user.userId);
      const have = new Set(recs.map((r) => r.id));
      return fromA.every((e) => have.has(e.id));
    }, { timeoutMs: 15_000, intervalMs: 200, what: `${label}: a record for every 200 from edge A` });
    await sleep(300); // a late duplicate or straggler would show by now
    recs = await records(user.userId);
    const ids = recs.map((r) => r.id);
    const have = new Set(ids);
    assert.equal(have.size, ids.length, `${label}: a request id recorded twice`);
    const answered = new Set(ok.map((e) => e.id));
    assert.equal(answered.size, ok.length, `${label}: two answers with one x-request-id`);
    // A record without a 200 can only be a request B was running when it died (answered, then
    // recorded, but the answer never reached the client).
    const unanswered = recs.filter((r) => !answered.has(r.id));
    assert.ok(unanswered.length <= state.inFlightAtKill,
      `${label}: ${unanswered.length} records of requests never answered 200 (${state.inFlightAtKill} in flight at the kill)`);
    // Every 200 from B not recorded was answered at the kill (its record not yet written).
    const lost = fromB.filter((e) => !have.has(e.id));
    const maxLostAgeMs = Math.max(0, ...lost.map((e) => state.killAt - e.doneAt));
    assert.ok(lost.every((e) => e.doneAt > state.killAt - RECORD_LOSS_WINDOW_MS),
      `${label}: a 200 from B answered ${maxLostAgeMs} ms before the kill has no record (written as the answer ends)`);
    // Charged once: the account's total cost is the sum of its records, each one request's cost.
    const acc = await account(user.userId);
    const sum = recs.reduce((s, r) => s + r.cost, 0);
    assert.equal(Number(acc.total_cost_micros), sum, `${label}: total cost vs records`);
    for (const r of recs) assert.equal(r.cost, W, `${label}: record ${r.id} cost`);
    assert.equal(Number(acc.balance_micros), Number(acc.total_top_ups_micros) - sum, `${label}: balance`);
    return { lost: lost.length, maxLostAgeMs, recs: recs.length, unanswered: unanswered.length, fromA: fromA.length, fromB: fromB.length };
  }

  it('phase 1: a key limited to N requests a minute never passes N across both edges', { timeout: 120_000 }, async () => {
    const user = await newUser('edge-kill-rpm', 100_000_000);
    await suite.ctl(['quota', 'set-policy', '--subject-kind=key', `--subject=${user.keyId}`, `--rpm=${RPM}`]);
    const log = [];
    const t0 = Date.now();
    // The policy is in force once an answer says so (that request counts like any other).
    const probe = new OpenAI({ baseURL: suite.baseURL, apiKey: user.key, maxRetries: 0, timeout: 20_000 });
    await waitFor(async () => {
      const e = { edge: 'A', sentAt: Date.now() };
      const { data, response } = await probe.chat.completions
        .create({ model: MODEL, messages: MESSAGES, max_tokens: MAX_TOKENS }).withResponse();
      Object.assign(e, { status: response.status, id: response.headers.get('x-request-id'), tokens: data.usage.total_tokens, doneAt: Date.now() });
      log.push(e);
      return response.headers.get('x-ratelimit-limit-requests') === String(RPM);
    }, { timeoutMs: 5_000, intervalMs: 200, what: 'the RPM policy to be in force' });

    const leasesBefore = await metric(serviceMetrics(2), 'tollgate_quota_leases_total');
    const admitsBefore = await metric(serviceMetrics(2), 'tollgate_quota_admissions_total', 'result="allowed"');
    const state = { killed: false };
    const logB = [];
    const okB = () => logB.filter((e) => e.status === 200).length;
    let leasesAtKill = 0;
    let admitsAtKill = 0;
    await Promise.all([
      load('B', edgeB.baseURL, user.key, logB, () => state.killed),
      killAndRestartB(() => okB() >= KILL_AFTER_Q, logB, state),
    ]);
    // Only B called quota meanwhile (A's probe came before the counts were taken).
    leasesAtKill = (await metric(serviceMetrics(2), 'tollgate_quota_leases_total')) - leasesBefore;
    admitsAtKill = (await metric(serviceMetrics(2), 'tollgate_quota_admissions_total', 'result="allowed"')) - admitsBefore;
    log.push(...logB);
    // Then A takes what is left of the minute, until it is refused REFUSALS_TO_STOP times in a row.
    await load('A', suite.baseURL, user.key, log, () => false);
    const span = Math.max(...log.map((e) => e.doneAt)) - t0;

    const ok = log.filter((e) => e.status === 200);
    const okA = ok.filter((e) => e.edge === 'A').length;
    const refusals = log.filter((e) => e.status === 429);
    const others = log.filter((e) => e.status !== 200 && e.status !== 429 && !(e.edge === 'B' && e.status === 0));
    const under = RPM - ok.length;
    const summary = { spanMs: span, okA, okB: okB(), limit: RPM, underAdmission: under, inFlightAtKill: state.inFlightAtKill,
      leasesGranted: leasesAtKill, quotaAdmitsWhileB: admitsAtKill, restartMs: state.restartedAt - state.killAt,
      refused: refusals.length, bErrorsAtKill: logB.filter((e) => e.status === 0).length };
    console.log(`edge kill, RPM: ${JSON.stringify(summary)}`);

    assert.ok(span < 55_000, `the phase took ${span} ms: no longer one minute's window`);
    assert.deepEqual(others.map((e) => `${e.edge} ${e.status} ${e.code}`), [], 'answers other than 200 and 429');
    assert.ok(refusals.every((e) => e.code === 'rate_limit_exceeded'), 'a refusal other than rate_limit_exceeded');
    // B really admitted from leases: fewer Admit calls reached quota than B had answers.
    assert.ok(leasesAtKill >= 1 && admitsAtKill < okB(), `B made ${admitsAtKill} Admit calls for ${okB()} answers: not from leases`);
    // (a) never over the limit, and the capacity the dead edge held back is bounded.
    assert.ok(ok.length <= RPM, `${ok.length} requests admitted across both edges in one minute, limit ${RPM}`);
    assert.ok(under <= 2 * Math.ceil(RPM / 8) + CONC,
      `under-admission ${under}: more than two leases (≤ 1/8 of the headroom each) and the requests in flight`);
    const rec = await checkRecords('phase 1', user, log, state);
    console.log(`edge kill, RPM records: ${JSON.stringify(rec)}`);
  });

  it('phase 2: a balance covering M requests is never overdrawn, spent to the end, charged once', { timeout: 120_000 }, async () => {
    const user = await newUser('edge-kill-money', M * W);
    const log = [];
    const state = { killed: false };
    const logB = [];
    const okB = () => logB.filter((e) => e.status === 200).length;
    const budgetsBefore = await metric(serviceMetrics(4), 'tollgate_billing_budgets_total', 'result="granted"');
    let budgetsAtKill = 0;
    let budgetHoldsAtKill = 0;
    const holdsBefore = await metric(edgeB.metricsURL, 'tollgate_edge_billing_holds_total', 'result="budget"');
    await Promise.all([
      load('B', edgeB.baseURL, user.key, logB, () => state.killed),
      killAndRestartB(async () => {
        if (okB() < KILL_AFTER_B) return false;
        budgetsAtKill = await metric(edgeB.metricsURL, 'tollgate_edge_billing_budgets');
        budgetHoldsAtKill = (await metric(edgeB.metricsURL, 'tollgate_edge_billing_holds_total', 'result="budget"')) - holdsBefore;
        return budgetsAtKill >= 1;
      }, logB, state),
    ]);
    log.push(...logB);
    const granted = (await metric(serviceMetrics(4), 'tollgate_billing_budgets_total', 'result="granted"')) - budgetsBefore;
    const atRestart = await account(user.userId);
    const heldAtRestart = Number(atRestart.held_micros);

    // While the dead budget counts, A spends what is not held, then is refused.
    const logA1 = [];
    await load('A', suite.baseURL, user.key, logA1, () => false);
    const a1End = Date.now();
    const afterA1 = await account(user.userId);
    log.push(...logA1);
    // The dead budget expires (its last refill + budget_ttl + hold_ttl ≤ the kill + those).
    await waitFor(async () => Number((await account(user.userId)).held_micros) === 0,
      { timeoutMs: BUDGET_TTL_MS + HOLD_TTL_MS + 10_000, intervalMs: 100, what: "the dead edge's budget to expire" });
    const freedAfterMs = Date.now() - state.killAt;
    // Then A spends the rest.
    const logA2 = [];
    await load('A', suite.baseURL, user.key, logA2, () => false);
    log.push(...logA2);
    const end = await account(user.userId);

    const ok = log.filter((e) => e.status === 200);
    const okA1 = logA1.filter((e) => e.status === 200).length;
    const okA2 = logA2.filter((e) => e.status === 200).length;
    const rec = await checkRecords('phase 2', user, log, state);
    const summary = { covers: M, okB: okB(), okA1, okA2, total200: ok.length, budgetsGranted: granted,
      bBudgetsAtKill: budgetsAtKill, bHeldFromBudget: budgetHoldsAtKill, inFlightAtKill: state.inFlightAtKill,
      restartMs: state.restartedAt - state.killAt, heldAtRestart, heldAfterA1: Number(afterA1.held_micros),
      a1EndsAfterKillMs: a1End - state.killAt, underAdmissionRequests: Number(afterA1.held_micros) / W,
      freedAfterMs, balanceEnd: Number(end.balance_micros), ...rec };
    console.log(`edge kill, budget: ${JSON.stringify(summary)}`);

    const others = log.filter((e) => e.status !== 200 && !(e.status === 429 && e.code === 'insufficient_quota') &&
      !(e.edge === 'B' && e.status === 0));
    assert.deepEqual(others.map((e) => `${e.edge} ${e.status} ${e.code}`), [], 'answers other than 200 and insufficient_quota');
    assert.ok(granted >= 1 && budgetHoldsAtKill >= 1, 'B held requests from a budget before it died');
    // The dead budget counted until it expired, and not longer than the documented bound.
    assert.ok(a1End - state.killAt < BUDGET_TTL_MS + HOLD_TTL_MS, 'A spent before the dead budget could expire');
    assert.ok(freedAfterMs <= BUDGET_TTL_MS + HOLD_TTL_MS + 2_000, `the dead budget was held ${freedAfterMs} ms after the kill`);
    // (b) never overdrawn (no credit), and (a) spent to the end: less than one request left.
    for (const a of [atRestart, afterA1, end]) assert.ok(Number(a.balance_micros) >= 0, `balance ${a.balance_micros} below zero`);
    assert.equal(Number(end.held_micros), 0);
    assert.ok(Number(end.balance_micros) < W, `${end.balance_micros} left after the dead budget expired: under-admission stuck`);
    // Every 200 is paid for, except the ones whose record the kill lost (counted in checkRecords).
    assert.equal(rec.recs, M - Number(end.balance_micros) / W, 'records vs the money spent');
    assert.equal(ok.length, rec.recs - rec.unanswered + rec.lost,
      `200s vs records (${rec.lost} answered and not recorded, ${rec.unanswered} recorded and not answered)`);
  });

  it('phase 3: a daily token quota is never overshot by what quota settled, and is used to the end', { timeout: 120_000 }, async () => {
    const user = await newUser('edge-kill-tokens', 100_000_000);
    await suite.ctl(['quota', 'set-policy', '--subject-kind=key', `--subject=${user.keyId}`, `--daily-tokens=${DAILY}`]);
    const usage = async () => {
      const u = await suite.ctlJson(['quota', 'get-usage', '--subject-kind=key', `--subject=${user.keyId}`]);
      return { settled: Number(u.daily_tokens ?? 0), reserved: Number(u.reserved_tokens ?? 0) };
    };
    // A request's estimate, as the edge makes it (the body the SDK sends / 3, plus max_tokens).
    const body = JSON.stringify({ model: MODEL, messages: MESSAGES, max_tokens: MAX_TOKENS });
    const estimate = Math.ceil(Buffer.byteLength(body) / 3) + MAX_TOKENS;
    await waitFor(async () => Number((await suite.ctlJson(['quota', 'get-usage', '--subject-kind=key', `--subject=${user.keyId}`]))
      .policy?.daily_tokens) === DAILY, { timeoutMs: 5_000, what: 'the daily quota to be in force' });
    const log = [];
    const state = { killed: false };
    const logB = [];
    const okB = () => logB.filter((e) => e.status === 200).length;
    const leasesBefore = await metric(serviceMetrics(2), 'tollgate_quota_leases_total');
    await Promise.all([
      load('B', edgeB.baseURL, user.key, logB, () => state.killed),
      killAndRestartB(() => okB() >= KILL_AFTER_T, logB, state),
    ]);
    log.push(...logB);
    const leases = (await metric(serviceMetrics(2), 'tollgate_quota_leases_total')) - leasesBefore;
    const atRestart = await usage();

    // While the dead lease's tokens are reserved, A uses what is left, then is refused.
    const logA1 = [];
    await load('A', suite.baseURL, user.key, logA1, () => false);
    log.push(...logA1);
    const a1End = Date.now();
    const afterA1 = await usage();
    // The dead lease's reservation expires at U + reservation_ttl (U ≤ the kill + lease_ttl).
    await waitFor(async () => (await usage()).reserved === 0,
      { timeoutMs: LEASE_TTL_MS + RESERVATION_TTL_MS + 10_000, intervalMs: 100, what: "the dead edge's lease tokens to expire" });
    const freedAfterMs = Date.now() - state.killAt;
    const logA2 = [];
    await load('A', suite.baseURL, user.key, logA2, () => false);
    log.push(...logA2);
    await sleep(300); // A's last settlements
    const end = await usage();

    // Which answers quota settled (settled_requests: "<request id>/<reservation>").
    const out = await suite.psql('tollgate_quota', 'SELECT request_id FROM settled_requests');
    const settledIds = new Set(out.split('\n').map((l) => l.trim().split('/')[0]).filter(Boolean));
    const ok = log.filter((e) => e.status === 200);
    const unsettled = ok.filter((e) => !settledIds.has(e.id));
    const served = ok.reduce((s, e) => s + e.tokens, 0);
    const summary = { daily: DAILY, estimate, okB: okB(), okA1: logA1.filter((e) => e.status === 200).length,
      okA2: logA2.filter((e) => e.status === 200).length, leasesGranted: leases, inFlightAtKill: state.inFlightAtKill,
      atRestart, afterA1, a1EndsAfterKillMs: a1End - state.killAt, freedAfterMs, end, served,
      unsettled: unsettled.length, unsettledTokens: unsettled.reduce((s, e) => s + e.tokens, 0),
      maxUnsettledAgeMs: Math.max(0, ...unsettled.map((e) => state.killAt - e.doneAt)),
      servedOverQuota: Math.max(0, served - DAILY) };
    console.log(`edge kill, daily tokens: ${JSON.stringify(summary)}`);

    const others = log.filter((e) => e.status !== 200 && !(e.status === 429 && e.code === 'insufficient_quota') &&
      !(e.edge === 'B' && e.status === 0));
    assert.deepEqual(others.map((e) => `${e.edge} ${e.status} ${e.code}`), [], 'answers other than 200 and insufficient_quota');
    assert.ok(leases >= 1, 'no lease was granted while B ran');
    // Never overshot: settled (and reserved) never above the quota.
    for (const u of [atRestart, afterA1, end]) assert.ok(u.settled + u.reserved <= DAILY, `settled ${u.settled} + reserved ${u.reserved} > ${DAILY}`);
    // The dead lease held tokens back until it expired, within the documented bound, and then
    // A used them: at the end less than one request's estimate is left.
    assert.ok(a1End - state.killAt < LEASE_TTL_MS + RESERVATION_TTL_MS, 'A finished before the dead lease could expire');
    assert.ok(freedAfterMs <= LEASE_TTL_MS + RESERVATION_TTL_MS + 2_000, `the dead lease was reserved ${freedAfterMs} ms after the kill`);
    assert.equal(end.reserved, 0);
    assert.ok(DAILY - end.settled < estimate, `${DAILY - end.settled} tokens left unused (a request needs ${estimate})`);
    // Every 200 from A settled once; quota's total is exactly the settled answers' tokens; an
    // answer quota never settled ended at the kill (its settlement not yet in B's journal).
    assert.ok(unsettled.every((e) => e.edge === 'B' && e.doneAt > state.killAt - RECORD_LOSS_WINDOW_MS),
      `answers quota never settled: ${JSON.stringify(unsettled)}`);
    assert.equal(end.settled, served - summary.unsettledTokens, 'settled tokens vs the settled answers');
  });
});
