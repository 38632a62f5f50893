// Turns bench/run.sh's raw measurements (raw.jsonl, machine.json in DIR) into results.json and a
// markdown report (results.md, also printed). Ratios are taken within the one run only.
//   node bench/report.mjs DIR
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
const raw = readFileSync(path.join(dir, 'raw.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const machine = existsSync(path.join(dir, 'machine.json')) ? JSON.parse(readFileSync(path.join(dir, 'machine.json'), 'utf8')) : {};
const names = { direct: 'mock upstream direct', nginx: 'nginx proxy_pass (keep-alive)', portkey: 'Portkey gateway (npm)',
  split: 'Tollgate, split (1 process/service)', all: 'Tollgate, --target=all' };
const label = (c) => names[c] || c;
const f = (v, d = 2) => (v === undefined || v === null || Number.isNaN(v) ? '–' : Number(v).toFixed(d));
const by = (scenario) => raw.filter((r) => r.scenario === scenario);
const md = [];
const results = { machine, throughput: {}, rates: {}, streaming: {}, streams: null, billing: null, startup: {}, ratios: {} };

md.push(`Run ${machine.started || ''} – ${machine.finished || ''} on ${machine.cpus || '?'} × ${machine.cpu || '?'}, ` +
  `${machine.mem_gb || '?'} GB, kernel ${machine.kernel || '?'}; load average at start ${machine.load_start || '?'}, ` +
  `at end ${machine.load_end || '?'}; commit ${machine.commit || '?'}.`, '');

const order = ['direct', 'nginx', 'portkey', 'split', 'all'];
const rank = (c) => (order.indexOf(c) < 0 ? 99 : order.indexOf(c));
const tp = by('throughput').sort((a, b) => rank(a.contender) - rank(b.contender));
if (tp.length) {
  for (const r of tp) results.throughput[r.contender] = r;
  const base = (c) => results.throughput[c]?.rps;
  md.push(`### Throughput, closed loop (wrk, ${tp[0].connections} connections, ${tp[0].seconds} s each)`, '',
    '| contender | req/s | p50 ms | p90 ms | p99 ms | req/s vs direct | vs nginx | vs Portkey |', '|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of tp) {
    const ratio = (c) => (base(c) ? f(r.rps / base(c)) : '–');
    md.push(`| ${label(r.contender)} | ${f(r.rps, 0)} | ${f(r.p50_ms)} | ${f(r.p90_ms)} | ${f(r.p99_ms)} | ${ratio('direct')} | ${ratio('nginx')} | ${ratio('portkey')} |`);
  }
  for (const t of ['all', 'split']) {
    if (!results.throughput[t]) continue;
    results.ratios[t] = {};
    for (const c of ['direct', 'nginx', 'portkey'])
      if (base(c)) results.ratios[t][`rps_vs_${c}`] = +(results.throughput[t].rps / base(c)).toFixed(3);
    for (const c of ['direct', 'nginx', 'portkey'])
      if (results.throughput[c]) results.ratios[t][`p99_added_ms_vs_${c}`] = +(results.throughput[t].p99_ms - results.throughput[c].p99_ms).toFixed(3);
  }
  md.push('');
}

const rateRows = raw.filter((r) => r.scenario.startsWith('rate-'));
if (rateRows.length) {
  const levels = [...new Set(rateRows.map((r) => r.scenario))];
  const contenders = [...new Set(rateRows.map((r) => r.contender))];
  for (const r of rateRows) (results.rates[r.scenario] ||= {})[r.contender] = r.result;
  md.push('### Latency at fixed rates, open loop (tollgate-bench-load; from each request\'s scheduled send time)', '',
    `| contender | ${levels.map((l) => { const any = rateRows.find((r) => r.scenario === l); return `${l.slice(5)}% = ${f(any.result.target_rate, 0)}/s: p50 / p90 / p99 / max ms (errors)`; }).join(' | ')} |`,
    `|---|${levels.map(() => '---:').join('|')}|`);
  for (const c of contenders) {
    md.push(`| ${label(c)} | ${levels.map((l) => {
      const r = results.rates[l]?.[c]; if (!r) return '–';
      const bad = r.errors + r.unfinished;
      return `${f(r.latency_ms.p50)} / ${f(r.latency_ms.p90)} / ${f(r.latency_ms.p99)} / ${f(r.latency_ms.max, 1)}${bad ? ` (${bad})` : ''}`;
    }).join(' | ')} |`);
  }
  md.push('');
}

const st = by('streaming');
if (st.length) {
  for (const r of st) results.streaming[r.contender] = r.result;
  const d = results.streaming.direct;
  md.push(`### Streaming (${machine.stream_model || 'mock stream'}, ${f(st[0].result.target_rate, 0)} streams/s for ${f(st[0].result.duration_s, 0)} s, open loop)`, '',
    '| contender | TTFB p50 ms | TTFB p99 ms | TTFB p50 added vs direct | chunk gap p50 ms | gap p99 ms | gap max ms | whole stream p99 ms | errors |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of st) {
    const x = r.result;
    md.push(`| ${label(r.contender)} | ${f(x.ttfb_ms.p50)} | ${f(x.ttfb_ms.p99)} | ${d ? f(x.ttfb_ms.p50 - d.ttfb_ms.p50) : '–'} | ${f(x.chunk_gap_ms.p50)} | ${f(x.chunk_gap_ms.p99)} | ${f(x.chunk_gap_ms.max)} | ${f(x.latency_ms.p99)} | ${x.errors + x.unfinished} |`);
  }
  md.push('');
}

const hold = by('streams')[0];
if (hold) {
  // The processes are the edges, in the order of the targets (one URL each), then the mock;
  // a record from before several edges has one edge and no targets.
  const x = hold.result;
  const nEdges = hold.edges || 1;
  const targets = x.targets || [{ established: x.established, failed: x.failed }];
  const edges = x.processes.slice(0, nEdges).map((p, i) => {
    const held = targets[i]?.established ?? 0;
    return { ...p, established: held, failed: targets[i]?.failed ?? 0,
      per_stream_kb: held ? (p.rss_held_kb - p.rss_before_kb) / held : 0 };
  });
  const mock = x.processes[nEdges];
  const sum = (k) => edges.reduce((t, e) => t + e[k], 0);
  const total = { rss_before_kb: sum('rss_before_kb'), rss_held_kb: sum('rss_held_kb'),
    per_stream_kb: x.established ? (sum('rss_held_kb') - sum('rss_before_kb')) / x.established : 0 };
  results.streams = { ...x, model: hold.model, open_rate: hold.open_rate, edges, edges_total: total, mock };
  md.push(`### Concurrent open streams (split mode: ${nEdges} edge process${nEdges > 1 ? 'es' : ''}, measured)`, '',
    `${x.established} of ${x.streams} streams established (${x.failed} failed), all opened in ${f(x.open_s)} s` +
      `${hold.open_rate ? ` at ${hold.open_rate}/s` : ''}${hold.model ? `, model \`${hold.model}\`` : ''}; RSS once every stream had its first event.`, '',
    '| process | streams held | RSS before MB | RSS held MB | held − before MB | per stream KB |',
    '|---|---:|---:|---:|---:|---:|');
  edges.forEach((e, i) => md.push(`| edge ${i + 1} (pid ${e.pid}) | ${e.established} | ${f(e.rss_before_kb / 1024, 1)} | ${f(e.rss_held_kb / 1024, 1)} | ${f((e.rss_held_kb - e.rss_before_kb) / 1024, 1)} | ${f(e.per_stream_kb, 1)} |`));
  if (nEdges > 1) md.push(`| **edges, sum** | ${x.established} | ${f(total.rss_before_kb / 1024, 1)} | **${f(total.rss_held_kb / 1024, 1)}** | ${f((total.rss_held_kb - total.rss_before_kb) / 1024, 1)} | **${f(total.per_stream_kb, 1)}** |`);
  if (mock) md.push(`| mock upstream (pid ${mock.pid}) | ${x.established} | ${f(mock.rss_before_kb / 1024, 1)} | ${f(mock.rss_held_kb / 1024, 1)} | ${f((mock.rss_held_kb - mock.rss_before_kb) / 1024, 1)} | ${f(mock.per_stream_kb, 1)} |`);
  if (x.first_error) md.push('', `First error: ${x.first_error}`);
  md.push('');
}

const bill = by('billing')[0];
if (bill) {
  const x = bill.result;
  results.billing = x;
  md.push('### Billing ingest (RecordUsage, durable commit before the answer)', '',
    '| records | batch | calls in flight | stored | duplicates | failed | seconds | records/s | call p50 ms | call p99 ms |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    `| ${x.records} | ${x.batch} | ${x.in_flight} | ${x.stored} | ${x.duplicates} | ${x.failed} | ${f(x.seconds)} | ${f(x.records_per_s, 0)} | ${f(x.call_ms.p50)} | ${f(x.call_ms.p99)} |`, '');
}

const su = by('startup');
if (su.length) {
  md.push('### Start-up and idle memory per service (split mode, warm restart: database up, migrations applied)', '',
    '| target | exec → healthy ms | idle RSS MB |', '|---|---:|---:|');
  for (const r of su) {
    results.startup[r.contender] = r;
    md.push(`| ${r.contender} | ${r.ready_ms} | ${f(r.idle_rss_kb / 1024, 1)} |`);
  }
  const total = su.reduce((a, r) => a + r.idle_rss_kb, 0);
  md.push(`| (sum of the five) | | ${f(total / 1024, 1)} |`, '');
}
// Per-request costs from the one process's counters around its throughput run.
const prom = (file) => {
  const sums = {};
  if (!existsSync(file)) return null;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m || m[1].endsWith('_bucket')) continue;
    sums[m[1]] = (sums[m[1]] || 0) + Number(m[3]);
  }
  return sums;
};
const before = prom(path.join(dir, 'metrics-before.txt')), after = prom(path.join(dir, 'metrics-after.txt'));
if (before && after) {
  const d = (n) => (after[n] || 0) - (before[n] || 0);
  const requests = d('tollgate_edge_http_requests_total');
  if (requests > 0) {
    const per = (n) => +(d(n) / requests).toFixed(3);
    results.per_request = {
      requests,
      edge_overhead_ms_mean: +((d('tollgate_edge_overhead_seconds_sum') / Math.max(1, d('tollgate_edge_overhead_seconds_count'))) * 1000).toFixed(3),
      auth_authenticate_calls: per('tollgate_auth_authenticate_total'),
      quota_admissions: per('tollgate_quota_admissions_total'),
      quota_settlements: per('tollgate_quota_settlements_total'),
      billing_holds: per('tollgate_billing_holds_total'),
      billing_records: per('tollgate_billing_usage_records_total'),
      router_routes: per('tollgate_router_routes_total'),
      router_attempt_reports: per('tollgate_router_attempts_total'),
      upstream_attempts: per('tollgate_edge_upstream_attempts_total'),
      billing_ingest_records_per_transaction: +(d('tollgate_billing_ingest_transaction_records_sum') / Math.max(1, d('tollgate_billing_ingest_transaction_records_count'))).toFixed(1),
    };
    md.push('### Per request in Tollgate (--target=all, counters around its throughput run)', '',
      '| measure | value |', '|---|---:|', ...Object.entries(results.per_request).map(([k, v]) => `| ${k} | ${v} |`), '');
  }
}
const idle = by('idle')[0];
if (idle) {
  results.all_rss_after_run_kb = idle.rss_after_run_kb;
  results.all_threads = idle.threads;
  md.push(`Tollgate --target=all after the run: RSS ${f(idle.rss_after_run_kb / 1024, 1)} MB, ${idle.threads} threads.`, '');
}

results.raw = raw;
writeFileSync(path.join(dir, 'results.json'), JSON.stringify(results, null, 2) + '\n');
writeFileSync(path.join(dir, 'results.md'), md.join('\n') + '\n');
console.log('\n' + md.join('\n'));
