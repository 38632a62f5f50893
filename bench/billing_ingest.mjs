// Billing ingest throughput with durability on: RecordUsage calls in batches, as the edge's
// spool sender makes them, each answered only after billing's transaction committed.
//   node bench/billing_ingest.mjs ADDR TOKEN_FILE USER_ID [RECORDS] [BATCH] [IN_FLIGHT]
// Prints one JSON object: records stored, seconds, records/s, per-call latency percentiles.
// Bounded: RECORDS (default 20000) records, each call with a 30 s deadline. 127.0.0.1 only.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [addr, tokenFile, userId, recordsArg, batchArg, inFlightArg] = process.argv.slice(2);
if (!addr || !tokenFile || !userId) {
  console.error('usage: billing_ingest.mjs ADDR TOKEN_FILE USER_ID [RECORDS] [BATCH] [IN_FLIGHT]');
  process.exit(2);
}
if (!addr.startsWith('127.0.0.1:')) { console.error('only 127.0.0.1 is benchmarked'); process.exit(2); }
const total = Number(recordsArg || 20000), batch = Number(batchArg || 200), inFlight = Number(inFlightArg || 4);

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'proto');
const def = protoLoader.loadSync('tollgate/billing/v1/billing.proto', { includeDirs: [root], longs: String, keepCase: true, defaults: true });
const pb = grpc.loadPackageDefinition(def).tollgate.billing.v1;
const client = new pb.BillingService(addr, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
md.set('authorization', `Bearer ${readFileSync(tokenFile, 'utf8').trim()}`);

const run = `bench-${process.pid}-${Date.now()}`;
let next = 0, stored = 0, duplicates = 0, failed = 0, firstError = '';
const callMs = [];
function makeBatch() {
  const records = [];
  const now = Date.now();
  for (let i = 0; i < batch && next < total; i++, next++) {
    records.push({
      request_id: `${run}-${next}`, user_id: userId, api_key_id: 0, model: 'gpt-4o-mini',
      upstream_model: 'gpt-4o-mini', prompt_tokens: 12, completion_tokens: 10, status: 200,
      latency_ms: 3, attempts: 1, client_ip: '127.0.0.1', started_at_ms: now - 3, finished_at_ms: now,
    });
  }
  return records;
}
function call(records) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    client.RecordUsage({ records }, md, { deadline: Date.now() + 30000 }, (err, res) => {
      callMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (err) { failed += records.length; firstError ||= err.message; }
      else { stored += res.recorded; duplicates += res.duplicates; }
      resolve();
    });
  });
}
async function worker() { for (let r = makeBatch(); r.length; r = makeBatch()) await call(r); }

const start = process.hrtime.bigint();
await Promise.all(Array.from({ length: inFlight }, worker));
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
callMs.sort((a, b) => a - b);
const pct = (p) => callMs.length ? callMs[Math.min(callMs.length - 1, Math.max(0, Math.ceil(p / 100 * callMs.length) - 1))] : 0;
console.log(JSON.stringify({
  records: total, batch, in_flight: inFlight, stored, duplicates, failed, seconds: +seconds.toFixed(3),
  records_per_s: +(stored / seconds).toFixed(1),
  call_ms: { p50: +pct(50).toFixed(2), p99: +pct(99).toFixed(2), max: +pct(100).toFixed(2) },
  first_error: firstError,
}));
client.close();
