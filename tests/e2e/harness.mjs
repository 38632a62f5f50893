// End-to-end harness: one Tollgate suite (PostgreSQL, mock upstream, every service) per test
// file, started through the launcher (scripts/run.sh up --detach) on free 127.0.0.1 ports with a
// temporary state directory, and always torn down (after hook, process exit, SIGINT/SIGTERM).
//
//   const suite = await startSuite({ env: { TOLLGATE_ROUTER__BREAKER__COOLDOWN: '2s' } });
//   suite.baseURL            http://127.0.0.1:P/v1 (for the openai SDK)
//   suite.mockURL            http://127.0.0.1:M (the mock upstream's control API lives here)
//   await suite.ctl([...])   runs tollgatectl with the admin token and the service's address
//   suite.demoKey            the demo user's Tollgate API key the launcher created (seed.sh)
//   await suite.stats()      GET /_mock/stats
//   await suite.setKeyBehavior('mock-key-a', { status: 500 })
//   await suite.stop()       stops the services, keeps the state dir (logs) for inspection
//   await suite.down()       stops (if needed) and removes the state dir; idempotent
//
// Split mode, one process per target (scripts/run.sh up --split):
//   const suite = await startSuite({ split: true });
//   suite.pidOf('billing')   the pid of that target's process (null if none)
//   await suite.kill9('billing')    SIGKILL it and wait until it is gone
//   await suite.restart('billing')  scripts/run.sh restart billing: start it, wait for its health
//   await suite.restart('edge', { env: { TOLLGATE_EDGE__X: 'y' } })  with more config from now on
//   const b = await suite.startExtraEdge('edge-b')  a second edge process (the suite's generated
//                            config, its own listen and metrics ports and spool dir, the same auth,
//                            quota, router and billing): b.baseURL, b.edgeURL, b.metricsURL; pid
//                            edge-b.pid, log logs/edge-b.log; pidOf, kill9 and restart take its
//                            name; stop() stops it (SIGTERM, SIGKILL after 15 s)
//
// Run: node --test --test-concurrency=1 tests/e2e/   (or ctest -R '^e2e$' in the build dir)
// Environment: BUILD_DIR (default <repo>/build); TG_E2E_KEEP=1 keeps the state dir; TG_E2E_SPLIT=1
// makes split mode the default; TG_E2E_TIMEOUT_S (tests/CMakeLists.txt sets it to the ctest
// TIMEOUT): 60 s before it the hang watchdog prints every live suite's stacks and log tails and
// fails the file (TG_E2E_WATCHDOG_S: after that many seconds instead);
// OPENAI_SPEC (default <repo>/../shared/spec/openai-openapi.json) for response validation.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const buildDir = process.env.BUILD_DIR || path.join(repoRoot, 'build');
export const ctlBin = path.join(buildDir, 'cmd/tollgate/tollgatectl');
export const PG_BIN = (() => {
  const base = '/usr/lib/postgresql';
  try {
    const v = fs.readdirSync(base).filter((d) => /^\d+$/.test(d)).sort((a, b) => b - a);
    for (const d of v) if (fs.existsSync(path.join(base, d, 'bin/psql'))) return path.join(base, d, 'bin');
  } catch {}
  return '/usr/lib/postgresql/15/bin';
})();

const UP_TIMEOUT_MS = 180_000; // launcher: deps check + no-op build + PostgreSQL + services + seed
const DOWN_TIMEOUT_MS = 90_000;
const CMD_TIMEOUT_MS = 30_000;
const HTTP_TIMEOUT_MS = 15_000;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const running = new Set(); // commands in flight (e.g. a launcher still starting the suite)
function killRunning() {
  for (const child of running) { try { process.kill(-child.pid, 'SIGKILL'); } catch {} }
  running.clear();
}

/** Runs a command with a hard timeout; resolves {code, stdout, stderr}, never rejects. */
export function run(cmd, args, { env = process.env, timeoutMs = CMD_TIMEOUT_MS, cwd = repoRoot } = {}) {
  return new Promise((resolve) => {
    // Own process group, so a timeout (or our exit) can end the command with everything it started.
    const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid, 'SIGKILL'); } catch {}
    }, timeoutMs);
    child.on('error', (e) => { running.delete(child); clearTimeout(timer); resolve({ code: -1, stdout, stderr: stderr + String(e) }); });
    child.on('close', (code, signal) => {
      running.delete(child);
      clearTimeout(timer);
      if (timedOut) stderr += `\n[harness] ${cmd} killed after ${timeoutMs} ms`;
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr, timedOut });
    });
  });
}

function canBind(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}
function nobodyListens(port) {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port });
    const done = (v) => { c.destroy(); resolve(v); };
    c.setTimeout(500, () => done(true));
    c.once('connect', () => done(false));
    c.once('error', () => done(true));
  });
}
async function isFree(port) { return (await canBind(port)) && (await nobodyListens(port)); }

/**
 * Free ports below the ephemeral range: {grpcBase (4 consecutive), pg, edge, metrics (5 consecutive:
 * split mode gives auth, quota, router and billing the 4 after the edge's)}.
 */
export async function freePorts() {
  const taken = new Set();
  const pick = async (count) => {
    for (let i = 0; i < 200; i++) {
      const p = 20000 + Math.floor(Math.random() * 12000);
      let ok = true;
      for (let k = 0; k < count && ok; k++) ok = !taken.has(p + k) && (await isFree(p + k));
      if (ok) { for (let k = 0; k < count; k++) taken.add(p + k); return p; }
    }
    throw new Error('no free ports found');
  };
  return { grpcBase: await pick(4), pg: await pick(1), edge: await pick(1), metrics: await pick(5) };
}

/** One free 127.0.0.1 port below the ephemeral range. */
async function freePort() {
  for (let i = 0; i < 200; i++) {
    const p = 20000 + Math.floor(Math.random() * 12000);
    if (await isFree(p)) return p;
  }
  throw new Error('no free port found');
}

async function http(url, init = {}) {
  const res = await fetch(url, { ...init, signal: init.signal ?? AbortSignal.timeout(HTTP_TIMEOUT_MS) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${init.method || 'GET'} ${url}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const live = new Set(); // suites to stop if the process exits without down()

function stopSync(suite) {
  // Also when an asynchronous stop() is under way: a second `run.sh down` is harmless.
  if (!suite.stopDone) {
    suite.stopped = true;
    for (const name of suite.extraEdges.keys()) {
      const pid = suite.pidOf(name);
      if (pid !== null) try { process.kill(pid, 'SIGKILL'); } catch {}
    }
    spawnSync('bash', [path.join(repoRoot, 'scripts/run.sh'), 'down'], {
      env: suite.env, cwd: repoRoot, stdio: 'ignore', timeout: DOWN_TIMEOUT_MS,
    });
    suite.stopDone = true;
  }
  if (!suite.removed && !process.env.TG_E2E_KEEP) fs.rmSync(suite.stateDir, { recursive: true, force: true });
  suite.removed = true;
  live.delete(suite);
}
// A file still running when ctest's timeout ends it would be killed without a word about where
// it hung: shortly before, every live suite's threads' stacks (scripts/run.sh stacks) and log
// tails are printed, its processes killed, and the file fails (the exit handler removes the rest).
// Armed by the first startSuite; armHangWatchdog(seconds) re-arms it to fire that many seconds
// from now (its own test does).
export const WATCHDOG_EXIT_CODE = 86;
let watchdog = null;
export function armHangWatchdog(seconds = undefined) {
  const fixed = Number(process.env.TG_E2E_WATCHDOG_S);
  const timeout = Number(process.env.TG_E2E_TIMEOUT_S);
  if (seconds === undefined) seconds = fixed > 0 ? fixed : timeout > 0 ? timeout - 60 - process.uptime() : 0;
  if (watchdog) clearTimeout(watchdog);
  watchdog = null;
  if (!(seconds > 0)) return;
  watchdog = setTimeout(async () => {
    // Awaited: a pipe may take the report in pieces, and exit would drop what is still queued.
    const out = (text) => new Promise((resolve) => process.stderr.write(`[harness] ${text}\n`, resolve));
    await out(`hang watchdog: still running after ${Math.round(process.uptime())} s` +
        (timeout > 0 ? ` of ctest's ${timeout} s` : '') + `; ${live.size} live suite(s), their stacks and logs follow`);
    await Promise.all([...live].map(async (suite) => {
      const r = await run('bash', [path.join(repoRoot, 'scripts/run.sh'), 'stacks'], { env: suite.env, timeoutMs: 45_000 });
      await out(`--- ${suite.stateDir} ---\n${r.stdout}${r.stderr}\n${suite.logTail(60)}`);
    }));
    for (const suite of live) {
      for (const f of fs.readdirSync(suite.stateDir).filter((n) => n.endsWith('.pid'))) {
        const pid = readPid(path.join(suite.stateDir, f));
        if (pid !== null) try { process.kill(pid, 'SIGKILL'); } catch {}
      }
    }
    process.exit(WATCHDOG_EXIT_CODE);
  }, seconds * 1000).unref();
}

let handlersInstalled = false;
function installExitHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  armHangWatchdog();
  // A launcher interrupted half-way is killed first, so it cannot start anything after `down`.
  process.on('exit', () => { killRunning(); for (const s of [...live]) stopSync(s); });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      killRunning();
      for (const s of [...live]) stopSync(s);
      process.exit(130);
    });
  }
}

function suiteEnv(ports, stateDir, extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    // Hermetic: never reach a real provider, never inherit someone else's config overrides.
    if (k.startsWith('TOLLGATE_') || k.startsWith('TG_') || k === 'OPENAI_API_KEY' || k === 'OPENAI_BASE_URL') continue;
    env[k] = v;
  }
  Object.assign(env, {
    BUILD_DIR: buildDir,
    TG_STATE_DIR: stateDir,
    TG_GRPC_BASE: String(ports.grpcBase),
    TG_PG_PORT: String(ports.pg),
    TG_EDGE_LISTEN: `127.0.0.1:${ports.edge}`,
    TG_METRICS_LISTEN: `127.0.0.1:${ports.metrics}`,
    TG_START_TIMEOUT: '120',
  }, extra);
  return env;
}

export const TARGETS = ['auth', 'quota', 'router', 'billing', 'edge'];

/** The process runs (a zombie, which a slow-reaping init may leave for a while, does not). */
export function pidAlive(pid) {
  try { process.kill(pid, 0); } catch { return false; }
  try { return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] !== 'Z'; } catch { return true; }
}
function readPid(file) {
  try { return Number(fs.readFileSync(file, 'utf8').trim()) || null; } catch { return null; }
}
function alivePidFile(file) { const pid = readPid(file); return pid !== null && pidAlive(pid); }

// TG_E2E_SPLIT=1 runs every suite split unless the test asks for a mode (ctest runs each file
// both ways: e2e_<name> and e2e_split_<name>).
const defaultSplit = process.env.TG_E2E_SPLIT === '1';

/**
 * Starts a suite. `env` adds variables to the launcher's environment (TOLLGATE_* reach the
 * services as config overrides). Retries once on new ports if the first start fails.
 */
export async function startSuite({ env: extra = {}, attempts = 2, split = defaultSplit } = {}) {
  installExitHandlers();
  let lastErr;
  const t0 = Date.now();
  // A second attempt (new ports) only when the first failed fast, e.g. a port taken meanwhile.
  for (let attempt = 1; attempt <= attempts && (attempt === 1 || Date.now() - t0 < 60_000); attempt++) {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-e2e-'));
    fs.chmodSync(stateDir, 0o755); // the PostgreSQL cluster runs as "postgres" when we are root
    const ports = await freePorts();
    const suite = makeSuite(stateDir, ports, suiteEnv(ports, stateDir, extra), split);
    live.add(suite);
    try {
      const r = await run('bash', [path.join(repoRoot, 'scripts/run.sh'), 'up', '--detach', ...(split ? ['--split'] : [])],
        { env: suite.env, timeoutMs: UP_TIMEOUT_MS });
      if (r.code !== 0) throw new Error(`launcher failed (${r.code}):\n${r.stdout}\n${r.stderr}\n${suite.logTail()}`);
      await suite.verifyOwnSuite();
      return suite;
    } catch (e) {
      lastErr = e;
      await suite.down();
    }
  }
  throw lastErr;
}

function makeSuite(stateDir, ports, env, split = false) {
  const routerAddr = `127.0.0.1:${ports.grpcBase + 2}`;
  const serviceAddr = { auth: 0, quota: 1, router: 2, billing: 3 };
  const suite = {
    stateDir, ports, env, routerAddr, split,
    baseURL: `http://127.0.0.1:${ports.edge}/v1`,
    edgeURL: `http://127.0.0.1:${ports.edge}`,
    mockURL: null,
    stopped: false,
    stopDone: false,
    removed: false,
    extraEdges: new Map(), // name -> {name, env, baseURL, edgeURL, metricsURL} (startExtraEdge)

    get adminToken() { return fs.readFileSync(path.join(stateDir, 'secrets/admin_token'), 'utf8').trim(); },
    get demoKey() { return fs.readFileSync(path.join(stateDir, 'secrets/demo_api_key'), 'utf8').trim(); },
    get mockPort() { return Number(fs.readFileSync(path.join(stateDir, 'mock.port'), 'utf8').trim()); },

    logTail(n = 40) {
      const tail = (name, lines) => {
        try {
          const all = fs.readFileSync(path.join(stateDir, `logs/${name}.log`), 'utf8').trimEnd().split('\n');
          return `--- tail of ${stateDir}/logs/${name}.log ---\n` + all.slice(-lines).join('\n');
        } catch { return ''; }
      };
      if (!split) return tail('tollgate', n);
      return [...TARGETS, ...suite.extraEdges.keys()].map((t) => tail(t, Math.ceil(n / 2))).filter(Boolean).join('\n');
    },

    /** Split mode: the pid of one target's process, or null when it is not running. */
    pidOf(target) {
      if (!TARGETS.includes(target) && !suite.extraEdges.has(target)) throw new Error(`unknown target ${target}`);
      const pid = readPid(path.join(stateDir, split ? `${target}.pid` : 'tollgate.pid'));
      return pid !== null && pidAlive(pid) ? pid : null;
    },

    /** Split mode: SIGKILL one target's process and wait (bounded) until it is gone; returns its pid. */
    async kill9(target) {
      if (!split) throw new Error('kill9 needs startSuite({ split: true })');
      const pid = suite.pidOf(target);
      if (pid === null) throw new Error(`${target} is not running`);
      process.kill(pid, 'SIGKILL');
      await waitFor(() => !pidAlive(pid), { timeoutMs: 10_000, intervalMs: 20, what: `${target} (pid ${pid}) to die` });
      return pid;
    },

    /**
     * Split mode: scripts/run.sh restart TARGET (starts it and waits for its health); returns the new pid.
     * `env` adds variables (TOLLGATE_* config overrides) to the suite's environment for this and later starts.
     */
    async restart(target, { env: extra = {} } = {}) {
      if (!split) throw new Error('restart needs startSuite({ split: true })');
      Object.assign(env, extra);
      if (suite.extraEdges.has(target)) return startEdgeProcess(suite.extraEdges.get(target));
      const r = await run('bash', [path.join(repoRoot, 'scripts/run.sh'), 'restart', target],
        { env, timeoutMs: UP_TIMEOUT_MS });
      if (r.code !== 0) throw new Error(`run.sh restart ${target} (${r.code}):\n${r.stdout}\n${r.stderr}\n${suite.logTail()}`);
      const pid = suite.pidOf(target);
      if (pid === null) throw new Error(`${target} not running after restart\n${suite.logTail()}`);
      return pid;
    },

    /**
     * Split mode: starts one more edge process NAME sharing the suite's services (see the header);
     * `env` adds config overrides for this edge only. Resolves once its /readyz answers.
     */
    async startExtraEdge(name = 'edge-b', { env: extra = {} } = {}) {
      if (!split) throw new Error('startExtraEdge needs startSuite({ split: true })');
      if (TARGETS.includes(name) || suite.extraEdges.has(name) || !/^[a-z0-9-]+$/.test(name)) throw new Error(`bad edge name ${name}`);
      const port = await freePort();
      const metricsPort = await freePort();
      const e = {
        name, baseURL: `http://127.0.0.1:${port}/v1`, edgeURL: `http://127.0.0.1:${port}`,
        metricsURL: `http://127.0.0.1:${metricsPort}/metrics`,
        env: {
          ...extra,
          TOLLGATE_EDGE__LISTEN: `127.0.0.1:${port}`,
          TOLLGATE_METRICS__LISTEN: `127.0.0.1:${metricsPort}`,
          TOLLGATE_EDGE__SPOOL_DIR: path.join(stateDir, `spool-${name}`),
          TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_FILE: path.join(stateDir, 'secrets/edge_token'),
        },
      };
      suite.extraEdges.set(name, e);
      await startEdgeProcess(e);
      return e;
    },

    /** The whole text of every log of the suite (logs/*.log and PostgreSQL's): {file: text}. */
    logs() {
      const dir = path.join(stateDir, 'logs');
      const files = fs.readdirSync(dir).filter((f) => f.endsWith('.log')).map((f) => path.join(dir, f));
      const pgLog = path.join(stateDir, 'pg/postgres.log');
      if (fs.existsSync(pgLog)) files.push(pgLog);
      return Object.fromEntries(files.map((f) => [f, fs.readFileSync(f, 'utf8')]));
    },

    /** tollgatectl with the admin token and the address of the service args[0] names; throws on a non-zero exit. */
    async ctl(args, { json = false } = {}) {
      const addr = `127.0.0.1:${ports.grpcBase + (serviceAddr[args[0]] ?? 2)}`;
      const full = [`--addr=${addr}`, `--admin-token-file=${path.join(stateDir, 'secrets/admin_token')}`];
      if (json) full.push('--json');
      full.push(...args);
      const r = await run(ctlBin, full, { env, timeoutMs: CMD_TIMEOUT_MS });
      if (r.code !== 0) throw new Error(`tollgatectl ${args.join(' ')}: exit ${r.code}: ${r.stderr}${r.stdout}`);
      return json ? JSON.parse(r.stdout) : r.stdout;
    },
    ctlJson(args) { return suite.ctl(args, { json: true }); },

    async stats() { return http(`${suite.mockURL}/_mock/stats`); },
    async resetMock() { return http(`${suite.mockURL}/_mock/reset`, { method: 'POST' }); },
    async mockLast() { return http(`${suite.mockURL}/_mock/last`); },
    async setKeyBehavior(key, obj) {
      return http(`${suite.mockURL}/_mock/keys/${encodeURIComponent(key)}`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(obj ?? {}),
      });
    },

    /** psql against one of the suite's databases; returns stdout. */
    async psql(db, sql) {
      const r = await run(path.join(PG_BIN, 'psql'), ['-h', '127.0.0.1', '-p', String(ports.pg), '-U', 'postgres',
        '-d', db, '-v', 'ON_ERROR_STOP=1', '-c', sql], { env });
      if (r.code !== 0) throw new Error(`psql ${db}: ${r.stderr}`);
      return r.stdout;
    },
    async pgDump(db) {
      const r = await run(path.join(PG_BIN, 'pg_dump'), ['-h', '127.0.0.1', '-p', String(ports.pg), '-U', 'postgres', db], { env });
      if (r.code !== 0) throw new Error(`pg_dump ${db}: ${r.stderr}`);
      return r.stdout;
    },

    /** The launcher's health check only probes ports: make sure they are ours. */
    async verifyOwnSuite() {
      for (const f of split ? TARGETS.map((t) => `${t}.pid`) : ['tollgate.pid']) {
        if (!alivePidFile(path.join(stateDir, f))) throw new Error(`${f}: not running\n${suite.logTail()}`);
      }
      suite.mockURL = `http://127.0.0.1:${suite.mockPort}`;
      await http(`${suite.mockURL}/_mock/health`);
      const providers = await suite.ctl(['router', 'list-providers']);
      if (!providers.includes(`127.0.0.1:${suite.mockPort}/v1`)) {
        throw new Error(`router not seeded with this suite's mock upstream:\n${providers}`);
      }
      const ready = await fetch(`${suite.edgeURL}/readyz`, { signal: AbortSignal.timeout(HTTP_TIMEOUT_MS) });
      if (!ready.ok) throw new Error(`edge /readyz: ${ready.status}`);
      // The launcher seeds the catalogue after the services start; an edge routing locally takes
      // it from the router within edge.routing_refresh (1 s). Tests start once the edge serves
      // every seeded model (bounded), not when the seed has merely been written.
      const { models: seeded } = await suite.ctlJson(['router', 'list-catalogue']);
      const names = (seeded ?? []).map((m) => m.model?.id).filter(Boolean);
      await waitFor(async () => {
        const res = await fetch(`${suite.baseURL}/models`, {
          headers: { authorization: `Bearer ${suite.demoKey}` }, signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
        });
        if (!res.ok) return false;
        const listed = new Set(((await res.json()).data ?? []).map((m) => m.id));
        return names.every((n) => listed.has(n));
      }, { timeoutMs: 10_000, intervalMs: 100, what: `the edge to serve the seeded models (${names.join(', ')})` });
    },

    /** Stops every process of the suite (PostgreSQL included), keeps the state dir. */
    async stop() {
      if (suite.stopped) return;
      suite.stopped = true;
      for (const name of suite.extraEdges.keys()) await stopEdgeProcess(name);
      const r = await run('bash', [path.join(repoRoot, 'scripts/run.sh'), 'down'], { env, timeoutMs: DOWN_TIMEOUT_MS });
      suite.stopDone = true;
      // A process that did not stop on SIGTERM had its threads' stacks printed by run.sh before
      // it was killed: shown even though `down` then succeeded, so a hung shutdown is visible.
      if (r.code !== 0 || /did not stop/.test(r.stdout ?? ''))
        process.stderr.write(`[harness] run.sh down: ${r.code} ${r.stdout} ${r.stderr}\n`);
    },

    /** stop() and remove the state dir (unless TG_E2E_KEEP is set). Idempotent. */
    async down() {
      await suite.stop();
      if (!suite.removed) {
        suite.removed = true;
        if (process.env.TG_E2E_KEEP) process.stderr.write(`[harness] state kept in ${stateDir}\n`);
        else fs.rmSync(stateDir, { recursive: true, force: true });
      }
      live.delete(suite);
    },
  };

  /** An extra edge: SIGTERM, wait for its clean stop (spool drained), SIGKILL after 15 s. */
  async function stopEdgeProcess(name) {
    const pid = suite.pidOf(name);
    if (pid === null) return;
    try { process.kill(pid, 'SIGTERM'); } catch {}
    try {
      await waitFor(() => !pidAlive(pid), { timeoutMs: 15_000, intervalMs: 50, what: `${name} to stop` });
    } catch {
      try { process.kill(pid, 'SIGKILL'); } catch {}
      await waitFor(() => !pidAlive(pid), { timeoutMs: 5_000, intervalMs: 20, what: `${name} to die` }).catch(() => {});
    }
  }

  /**
   * Starts (or restarts: stops it first, as run.sh restart) an extra edge; resolves with its pid
   * once /readyz answers. Its ports were free when picked, but a restart finds them free only
   * once the killed process's sockets are gone and if nothing took them meanwhile (tests run two
   * at a time): an edge that cannot bind tries its ports once more, then new ones (e.baseURL,
   * e.edgeURL and e.metricsURL change), four starts at most.
   */
  async function startEdgeProcess(e) {
    const pidFile = path.join(stateDir, `${e.name}.pid`);
    await stopEdgeProcess(e.name);
    const logFile = path.join(stateDir, `logs/${e.name}.log`);
    for (let attempt = 1; ; attempt++) {
      const logStart = fs.existsSync(logFile) ? fs.statSync(logFile).size : 0;
      const fd = fs.openSync(logFile, 'a');
      const child = spawn(path.join(buildDir, 'cmd/tollgate/tollgate'),
        ['serve', `--config=${path.join(stateDir, 'tollgate.yaml')}`, '--target=edge'],
        { env: { ...env, ...e.env }, cwd: repoRoot, stdio: ['ignore', fd, fd], detached: true });
      fs.closeSync(fd);
      child.on('error', () => {});
      child.unref();
      fs.writeFileSync(pidFile, String(child.pid));
      let exited = false;
      await waitFor(async () => {
        if (!pidAlive(child.pid)) { exited = true; return true; }
        try { return (await fetch(`${e.edgeURL}/readyz`, { signal: AbortSignal.timeout(2000) })).ok; } catch { return false; }
      }, { timeoutMs: 60_000, intervalMs: 100, what: `${e.name} /readyz` });
      if (!exited) return child.pid;
      const startLog = fs.readFileSync(logFile, 'utf8').slice(logStart);
      const portTaken = /binding to port|[Aa]ddress already in use/.test(startLog);
      if (!portTaken || attempt >= 4) throw new Error(`${e.name} exited during start-up\n${suite.logTail()}`);
      await sleep(300);
      if (attempt === 1) continue;  // the killed process's own sockets may take a moment to go
      const port = await freePort();
      const metricsPort = await freePort();
      Object.assign(e, {
        baseURL: `http://127.0.0.1:${port}/v1`, edgeURL: `http://127.0.0.1:${port}`,
        metricsURL: `http://127.0.0.1:${metricsPort}/metrics`,
      });
      Object.assign(e.env, { TOLLGATE_EDGE__LISTEN: `127.0.0.1:${port}`, TOLLGATE_METRICS__LISTEN: `127.0.0.1:${metricsPort}` });
    }
  }

  return suite;
}

/** API keys, upstream secrets, the admin token and the master key must never appear in any log line. */
export function findSecretsInLogs(suite, extraSecrets = []) {
  const masterKey = fs.readFileSync(path.join(suite.stateDir, 'secrets/master_key'), 'utf8').trim();
  const demoKey = suite.demoKey;
  const secrets = ['mock-key-a', 'mock-key-b', suite.adminToken, masterKey, demoKey, ...extraSecrets];
  const name = (s) => (s === suite.adminToken ? 'the admin token' : s === masterKey ? 'the router master key'
    : s === demoKey ? 'the demo API key' : s);
  const hits = [];
  for (const [file, text] of Object.entries(suite.logs())) {
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      for (const s of secrets) if (s && line.includes(s)) hits.push(`${file}:${i + 1}: contains ${name(s)}: ${line.slice(0, 300)}`);
    });
  }
  return hits;
}

// ---- OpenAPI spec (../shared/spec) ----

export const specPath = process.env.OPENAI_SPEC || path.resolve(repoRoot, '../shared/spec/openai-openapi.json');

function fixNullable(node) {
  if (Array.isArray(node)) { node.forEach(fixNullable); return; }
  if (!node || typeof node !== 'object') return;
  for (const v of Object.values(node)) fixNullable(v);
  if (node.nullable === true) {
    delete node.nullable;
    if (node.type !== undefined) node.type = Array.isArray(node.type) ? [...new Set([...node.type, 'null'])] : [node.type, 'null'];
    if (Array.isArray(node.enum) && !node.enum.includes(null)) node.enum.push(null);
    if (node.type === undefined && node.enum === undefined) {
      // e.g. {nullable: true, allOf/oneOf/$ref...}: allow null alongside whatever it is.
      const rest = { ...node };
      for (const k of Object.keys(node)) delete node[k];
      node.anyOf = [rest, { type: 'null' }];
    }
  }
}

let validators = null;
/**
 * Returns {validate(name, value) → list of error strings}, or null when the spec file is absent on a
 * developer's machine. In CI (CI set) an absent spec is an error: validation must not skip silently.
 */
export async function loadSpec() {
  if (validators) return validators;
  if (!fs.existsSync(specPath)) {
    if (process.env.CI && process.env.CI !== 'false') {
      throw new Error(`${specPath} not found: CI validates every response against the OpenAI spec (set OPENAI_SPEC or place shared/ beside the clone)`);
    }
    return null;
  }
  const { default: Ajv } = await import('ajv');
  const { default: addFormats } = await import('ajv-formats');
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  fixNullable(spec.components);
  const quiet = { log() {}, warn() {}, error: console.error };
  const ajv = new Ajv({ strict: false, allErrors: true, logger: quiet });
  addFormats(ajv);
  ajv.addFormat('unixtime', { type: 'number', validate: (n) => Number.isInteger(n) && n >= 0 });
  ajv.addSchema({ $id: 'openai', components: spec.components });
  const cache = new Map();
  validators = {
    validate(name, value) {
      if (!cache.has(name)) cache.set(name, ajv.compile({ $ref: `openai#/components/schemas/${name}` }));
      const v = cache.get(name);
      if (v(value)) return [];
      return v.errors.map((e) => `${e.instancePath || '/'} ${e.message} ${JSON.stringify(e.params)}`);
    },
  };
  return validators;
}

// ---- helpers shared by the test files ----

/**
 * An openai SDK client for the suite, with the demo API key unless opts.apiKey says otherwise:
 * no SDK retries (tests see each status), bounded timeout.
 */
export async function openaiClient(suite, opts = {}) {
  const { default: OpenAI } = await import('openai');
  return new OpenAI({ baseURL: suite.baseURL, apiKey: suite.demoKey, maxRetries: 0, timeout: 20_000, ...opts });
}

/** Polls fn() until it returns a truthy value; returns it, or throws after timeoutMs. */
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Registers a catalogue model routed to the seeded mock provider (model-name knobs, e.g. mock-chunks-5-delay-200). */
export async function addMockModel(suite, name) {
  const { providers } = await suite.ctlJson(['router', 'list-providers']);
  const mock = providers.find((p) => p.name === 'mock');
  await suite.ctl(['router', 'create-model', `--name=${name}`, '--owned-by=mock']);
  await suite.ctl(['router', 'set-model-route', `--model=${name}`, `--provider-id=${mock.id}`]);
}

/**
 * A provider of type anthropic pointing at the suite's mock upstream (its Anthropic mode, POST
 * /v1/messages), with one upstream key per secret (named NAME-1, NAME-2...); returns the provider's id.
 */
export async function addAnthropicProvider(suite, name, secrets) {
  const { provider } = await suite.ctlJson(['router', 'create-provider', `--name=${name}`, '--type=anthropic',
    `--base-url=http://127.0.0.1:${suite.mockPort}`]);
  for (const [i, secret] of secrets.entries()) {
    await suite.ctl(['router', 'create-upstream-key', `--provider-id=${provider.id}`, `--name=${name}-${i + 1}`,
      `--secret=${secret}`]);
  }
  return provider.id;
}

/** A catalogue model routed to a provider, optionally under another upstream model name (mock-tools-2). */
export async function addRoutedModel(suite, name, providerId, upstreamModel = '') {
  await suite.ctl(['router', 'create-model', `--name=${name}`, '--owned-by=anthropic']);
  await suite.ctl(['router', 'set-model-route', `--model=${name}`, `--provider-id=${providerId}`,
    ...(upstreamModel ? [`--upstream-model=${upstreamModel}`] : [])]);
}

/** list-upstream-keys --json as {name: key} (mock-a, mock-b). */
export async function keysByName(suite) {
  const { keys } = await suite.ctlJson(['router', 'list-upstream-keys']);
  return Object.fromEntries(keys.map((k) => [k.name, k]));
}

/**
 * A key's health for one upstream model (health.models[], per (key, model): timeouts, 5xx and
 * 429s land there; connect errors and 401/403 on the key itself); a closed, idle default when
 * the router lists none.
 */
export function modelHealth(key, upstreamModel) {
  return key.health.models?.find((m) => m.upstream_model === upstreamModel)
    ?? { upstream_model: upstreamModel, state: 'BREAKER_STATE_CLOSED', consecutive_failures: 0, breaker_open_until_ms: '0', rate_limited_until_ms: '0' };
}

/**
 * Waits until every upstream key, and every model of it, is closed and not rate limited. The edge
 * reports attempt outcomes to the router in batches (edge.outcome_flush_interval, 100 ms), so
 * first give the outcomes of earlier requests time to land.
 */
export async function waitKeysHealthy(suite, timeoutMs = 10_000) {
  await sleep(400);
  const healthy = (h) => h.state === 'BREAKER_STATE_CLOSED' && Number(h.rate_limited_until_ms) <= Date.now();
  return waitFor(async () => {
    const keys = Object.values(await keysByName(suite));
    return keys.every((k) => healthy(k.health) && (k.health.models ?? []).every(healthy));
  }, { timeoutMs, intervalMs: 200, what: 'every upstream key and model closed and not rate limited' });
}

/** Runs fn(i) for i in [0, n) with at most `concurrency` in flight; returns the results in order. */
export async function pool(n, concurrency, fn) {
  const out = new Array(n);
  let next = 0;
  const worker = async () => { while (next < n) { const i = next++; out[i] = await fn(i); } };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return out;
}
