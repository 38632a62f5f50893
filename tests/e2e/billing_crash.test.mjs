// kill -9 of the billing service during a load of streamed requests, through the edge, with the
// openai SDK (the required test). The suite runs split (scripts/run.sh up --split: one
// process per target, as docker-compose.yml runs them), so billing can die alone.
//
// A fresh user with a known top-up sends a bounded load of slow streamed chat completions; while
// streams are in flight, billing is SIGKILLed. The load goes on for a while: the edge may still
// spend what billing granted it before it died (its budget for the user, docs/architecture.md
// "Billing", Budgets) until that runs out, at most BUDGET_TTL_MS after the grant; after that new
// requests are refused with 503 while billing is down (billing's Hold fails closed),
// then billing is restarted and the edge's spool redelivers what billing had not acknowledged.
// Afterwards: usage records of the user = admitted requests (a stream the SDK returned; one that
// failed half-way would count too), and the balance = top-up − the sum of the recorded costs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addMockModel, openaiClient, sleep, startSuite, waitFor } from './harness.mjs';

const MODEL = 'mock-chunks-8-delay-150'; // 8 content chunks, 150 ms apart: ~1.2 s per stream
const MESSAGES = [{ role: 'user', content: 'stream slowly while billing dies' }];
const TOP_UP = 50_000_000; // micro-units
const PRICE_IN = 3_000_000; // per 1M tokens
const PRICE_OUT = 7_000_000;
const CONCURRENCY = 12;
const TARGET_ADMITTED = 84; // the load stops once this many were admitted
const MAX_ATTEMPTS = 400; // refused attempts included
const KILL_AFTER_DONE = 20; // billing dies once this many streams finished (and others run)
const REFUSED_PAUSE_MS = 500; // a refused worker waits this long before its next request
const LOAD_DEADLINE_MS = 60_000;
const BUDGET_TTL_MS = 1_000; // billing.budget_ttl: how long an edge may spend a budget it was granted
const REDELIVERY_TIMEOUT_MS = 30_000;

const day = (offsetDays) => new Date(Date.now() + offsetDays * 86_400_000).toISOString().slice(0, 10);

describe('kill -9 of billing during streamed load, through the edge', { timeout: 300_000 }, () => {
  let suite;
  let OpenAI;

  before(async () => {
    suite = await startSuite({ split: true, env: { TOLLGATE_BILLING__BUDGET_TTL: `${BUDGET_TTL_MS / 1000}s` } });
    ({ default: OpenAI } = await import('openai'));
  }, { timeout: 240_000 });

  after(async () => { await suite?.down(); }, { timeout: 120_000 });

  /** The edge's own metrics (the edge's process serves TG_METRICS_LISTEN in split mode). */
  async function edgeMetric(name, labels) {
    let text;
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch(`http://127.0.0.1:${suite.ports.metrics}/metrics`, { signal: AbortSignal.timeout(5000) });
        text = await res.text();
        break;
      } catch (err) {
        // A pooled keep-alive connection the metrics server closed meanwhile: ask again.
        if (attempt >= 3) {
          throw new Error(`edge /metrics: ${err.message} (${err.cause?.code ?? err.cause?.message ?? ''}); ` +
            `edge pid ${suite.pidOf('edge')}\n${suite.logTail(60)}`);
        }
        await sleep(100);
      }
    }
    const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  /** billing usage-report for the user (the admin RPC), around today so midnight cannot split it. */
  async function report(userId) {
    const r = await suite.ctlJson(['billing', 'usage-report', `--from-day=${day(-1)}`, `--to-day=${day(1)}`,
      '--group-by=user', `--user-id=${userId}`]);
    const row = (r.rows ?? [])[0] ?? {};
    return { requests: Number(row.requests ?? 0), cost: Number(row.cost_micros ?? 0) };
  }

  it('records = admitted requests, balance = top-up − costs, after kill -9 and redelivery', { timeout: 200_000 }, async () => {
    // A user of its own, with a key, a prepaid account and a priced, routed model.
    const userId = (await suite.ctlJson(['auth', 'create-user', '--name=crash-load'])).user.id;
    const { api_key: key } = await suite.ctlJson(['auth', 'create-api-key', `--user-id=${userId}`, '--name=crash-load']);
    await suite.ctl(['billing', 'create-account', `--user-id=${userId}`]);
    await suite.ctl(['billing', 'top-up', `--user-id=${userId}`, `--amount-micros=${TOP_UP}`]);
    await suite.ctl(['billing', 'set-price', `--model=${MODEL}`, `--input-micros-per-mtok=${PRICE_IN}`,
      `--output-micros-per-mtok=${PRICE_OUT}`]);
    await addMockModel(suite, MODEL);
    const client = await openaiClient(suite, { apiKey: key, timeout: 20_000 });
    // One request before the load: the path works and the user starts from a known record count.
    const warm = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 50 });
    assert.ok(warm.choices[0].message.content);
    await waitFor(async () => (await report(userId)).requests === 1, { timeoutMs: 10_000, what: 'the warm-up record' });

    const billingPid = suite.pidOf('billing');
    assert.ok(billingPid, 'billing runs in its own process');
    assert.notEqual(billingPid, suite.pidOf('edge'));

    // The load. Each attempt ends as admitted (the SDK returned the stream) or refused (an HTTP
    // error before any stream); an admitted stream may still fail later and stays admitted.
    const WARM_UP = 1;
    const c = { attempts: 0, admitted: 0, refused: 0, done: 0, streamErrors: 0, inFlight: 0, noChunk: 0 };
    const active = new Set(); // attempt numbers of the streams running now
    const refusedStatus = new Map(); // status -> count
    const otherErrors = [];
    let killedAt = null; // {inFlight, admitted, done} at the kill instant
    let killTime = Infinity; // when billing was dead for sure
    let restartTime = Infinity; // when its restart began
    let refusedWhileDown = 0;
    let admittedWhileDown = 0; // sent after the kill and the edge's last budget, yet admitted
    let admittedFromBudget = 0; // sent after the kill, within the life of a budget granted before it
    let admittedAfter = 0;
    const loadDeadline = Date.now() + LOAD_DEADLINE_MS;

    const one = async () => {
      const id = ++c.attempts;
      const sentAt = Date.now();
      const down = () => sentAt > killTime + BUDGET_TTL_MS && Date.now() < restartTime;
      const budgetLife = () => sentAt > killTime && sentAt <= killTime + BUDGET_TTL_MS;
      let stream;
      try {
        stream = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, stream: true, max_tokens: 50 });
      } catch (err) {
        if (err instanceof OpenAI.APIError && err.status) {
          c.refused++;
          refusedStatus.set(err.status, (refusedStatus.get(err.status) ?? 0) + 1);
          if (down()) refusedWhileDown++;
        } else {
          otherErrors.push(`${err?.constructor?.name}: ${err?.message}`);
        }
        await sleep(REFUSED_PAUSE_MS);
        return;
      }
      c.admitted++;
      if (down()) admittedWhileDown++;
      if (budgetLife()) admittedFromBudget++;
      if (sentAt > restartTime) admittedAfter++;
      c.inFlight++;
      active.add(id);
      let chunks = 0;
      try {
        for await (const chunk of stream) if (chunk) chunks++;
      } catch (err) {
        c.streamErrors++;
        otherErrors.push(`stream: ${err?.constructor?.name}: ${err?.message}`);
      } finally {
        active.delete(id);
        c.inFlight--;
        c.done++;
        if (chunks === 0) c.noChunk++;
      }
    };
    const worker = async () => {
      while ((c.admitted < TARGET_ADMITTED || restartTime === Infinity) && c.attempts < MAX_ATTEMPTS &&
             Date.now() < loadDeadline) {
        await one();
      }
    };

    // The crash, concurrently with the load: kill -9 while streams are in flight, keep the load
    // going until every stream that was running at the kill has ended (its record can only reach
    // the spool, not billing) and a little longer, then restart billing.
    let spoolWhileDown = 0;
    const crash = async () => {
      await waitFor(() => (c.done >= KILL_AFTER_DONE && c.inFlight >= CONCURRENCY / 2) || Date.now() > loadDeadline,
        { timeoutMs: LOAD_DEADLINE_MS + 1000, intervalMs: 5, what: 'the load to be under way' });
      const running = new Set(active);
      killedAt = { inFlight: running.size, admitted: c.admitted, done: c.done };
      await suite.kill9('billing');
      killTime = Date.now();
      await waitFor(() => [...running].every((id) => !active.has(id)),
        { timeoutMs: 30_000, intervalMs: 20, what: 'the streams in flight at the kill to end' });
      await sleep(BUDGET_TTL_MS + 1000); // past the budgets granted before the kill: then refused
      spoolWhileDown = await edgeMetric('tollgate_edge_billing_spool', 'what="records"');
      restartTime = Date.now();
      await suite.restart('billing');
    };

    const t0 = Date.now();
    await Promise.all([crash(), ...Array.from({ length: CONCURRENCY }, worker)]);
    const loadMs = Date.now() - t0;

    // Redelivery: bounded wait until billing has every admitted request (and, for a moment, no more).
    let last = { requests: -1 };
    try {
      await waitFor(async () => (last = await report(userId)).requests >= c.admitted + WARM_UP,
        { timeoutMs: REDELIVERY_TIMEOUT_MS, intervalMs: 250, what: 'billing to have a record per admitted request' });
    } catch (e) {
      throw new Error(`${e.message}: ${last.requests} records for ${c.admitted + WARM_UP} admitted; ` +
        `spool ${await edgeMetric('tollgate_edge_billing_spool', 'what="records"')}\n${suite.logTail(60)}`);
    }
    await waitFor(async () => (await edgeMetric('tollgate_edge_billing_spool', 'what="records"')) === 0,
      { timeoutMs: 10_000, intervalMs: 100, what: 'the edge spool to drain' });
    await sleep(500); // a late duplicate would show up by now

    const rep = await report(userId);
    const db = (await suite.psql('tollgate_billing',
      `SELECT count(*) || ' ' || count(DISTINCT request_id) || ' ' || coalesce(sum(cost_micros), 0) || ' ' || count(*) FILTER (WHERE cost_micros <= 0)
         FROM usage_records WHERE user_id = ${userId}`)).split('\n')[2].trim().split(' ').map(Number);
    const [dbRecords, dbDistinct, dbCost, dbFree] = db;
    const account = (await suite.ctlJson(['billing', 'get-balance', `--user-id=${userId}`])).account;
    const delivered = await edgeMetric('tollgate_edge_billing_records_total', 'result="delivered"');
    const dropped = await edgeMetric('tollgate_edge_billing_records_total', 'result="dropped"');

    const summary = {
      loadMs, ...c, killedAt, refusedStatus: Object.fromEntries(refusedStatus), refusedWhileDown,
      admittedWhileDown, admittedFromBudget, admittedAfter, downMs: restartTime - killTime, spoolWhileDown, records: rep.requests, dbRecords, cost: rep.cost,
      balance: Number(account.balance_micros), held: Number(account.held_micros),
      available: Number(account.available_micros), delivered, dropped,
    };
    console.log(`billing crash: ${JSON.stringify(summary)}`);

    // The kill really hit mid-load, and the load went on across it.
    assert.ok(killedAt, 'billing was killed');
    assert.ok(killedAt.inFlight >= 1, `no stream in flight at the kill: ${JSON.stringify(killedAt)}`);
    assert.ok(admittedAfter >= 1, 'nothing admitted after the restart: billing never came back into use');
    assert.ok(refusedWhileDown >= 1, 'no request was refused while billing was down: it was not down under load');
    assert.ok(spoolWhileDown >= 1, 'no record waited in the spool while billing was down');
    // Every stream admitted before the kill ran to the end: billing's death does not touch the relay.
    assert.deepEqual(otherErrors, [], 'errors other than HTTP refusals');
    assert.equal(c.streamErrors, 0);
    assert.equal(c.noChunk, 0, 'an admitted stream yielded no chunk');
    // Refusals: only billing's fail-closed 503 (the hold cannot be placed while it is down).
    assert.deepEqual([...refusedStatus.keys()].filter((s) => s !== 503), [], 'refusals other than 503');
    assert.equal(admittedWhileDown, 0, "a request sent while billing was down, after the edge's budgets ran out, was admitted (fail closed)");

    // Records = admitted, exactly: none lost, none counted twice.
    assert.equal(rep.requests, c.admitted + WARM_UP, 'usage-report requests vs admitted');
    assert.equal(dbRecords, c.admitted + WARM_UP, 'usage_records rows vs admitted');
    assert.equal(dbDistinct, dbRecords);
    assert.equal(dbFree, 0, 'a record without a cost (the model is priced)');
    assert.equal(dropped, 0, 'the edge dropped records');
    // Balance = top-up − the sum of the costs recorded.
    assert.equal(dbCost, rep.cost);
    assert.ok(rep.cost > 0);
    assert.equal(Number(account.total_top_ups_micros), TOP_UP);
    assert.equal(Number(account.total_cost_micros), rep.cost);
    assert.equal(Number(account.balance_micros), TOP_UP - rep.cost);
    // Nothing held once everything settled: live holds are in billing's memory (the hold book), so
    // the kill lost those of the streams then running (their records charge them regardless), and
    // every hold granted after the restart ended with its record.
    assert.equal(Number(account.held_micros), 0, 'holds still live after every record was committed');
    assert.equal(Number(account.available_micros),
      Number(account.balance_micros) + Number(account.credit_limit_micros ?? 0) - Number(account.held_micros));
  });
});
