// The e2e harness's hang watchdog: a test file that hangs with a suite up (here a child process
// that starts a split suite, re-arms the watchdog to 2 s and then waits forever, as a test stuck
// on a request would) gets every process's threads' stacks and log tails printed, its processes
// killed, its state removed and a failing exit code, instead of being killed silently by ctest's
// timeout with the suite left running.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WATCHDOG_EXIT_CODE, pidAlive } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

describe('hang watchdog', { timeout: 300_000 }, () => {
  it('a hung file prints its suite\'s stacks and logs, kills it and fails', { timeout: 280_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-watchdog-'));
    const script = path.join(dir, 'hang.mjs');
    fs.writeFileSync(script, `
      import { startSuite, armHangWatchdog } from ${JSON.stringify(path.join(here, 'harness.mjs'))};
      import fs from 'node:fs';
      const suite = await startSuite({ split: true });
      const pids = fs.readdirSync(suite.stateDir).filter((f) => f.endsWith('.pid'))
        .map((f) => Number(fs.readFileSync(suite.stateDir + '/' + f, 'utf8')));
      console.log(JSON.stringify({ stateDir: suite.stateDir, pids }));
      armHangWatchdog(2);
      setInterval(() => {}, 1000); // stuck, with the event loop busy: as on a request that never ends
    `);
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const code = await new Promise((resolve) => child.on('exit', (c) => resolve(c)));
    fs.rmSync(dir, { recursive: true, force: true });

    assert.equal(code, WATCHDOG_EXIT_CODE, `exit ${code}\n${stdout}\n${stderr}`);
    const { stateDir, pids } = JSON.parse(stdout.trim().split('\n').at(-1));
    assert.ok(pids.length >= 6, `the split suite's processes and the mock: ${pids}`);
    assert.match(stderr, /hang watchdog: still running after \d+ s( of ctest's \d+ s)?; 1 live suite\(s\)/);
    for (const target of ['auth', 'quota', 'router', 'billing', 'edge', 'mock'])
      assert.match(stderr, new RegExp(`stacks of ${target} \\(pid \\d+\\)`), target);
    if (spawnSync('sh', ['-c', 'command -v gdb']).status === 0) {
      // gdb's "thread apply all bt" of a tollgate process: named threads and Tollgate's frames.
      assert.match(stderr, /Thread \d+ \(Thread 0x[0-9a-f]+ \(LWP \d+\)/);
      assert.match(stderr, /tollgate::/);
    } else {
      assert.match(stderr, /no gdb to print the stacks/);
    }
    assert.match(stderr, /--- tail of .*logs\/edge\.log ---/, stderr.slice(-4000));
    for (const pid of pids) assert.ok(!pidAlive(pid), `process ${pid} was left running`);
    assert.ok(!fs.existsSync(stateDir), 'the state dir is removed');
  });
});
