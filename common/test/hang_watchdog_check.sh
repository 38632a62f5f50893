#!/usr/bin/env bash
# Checks the hang watchdog (hang_watchdog.cpp) on a test that hangs on purpose
# (hang_watchdog_test.cpp): it must abort well before ctest's timeout, after printing every
# thread's stack, the wedged function's name included, and the child process's, then kill it.
# Usage: hang_watchdog_check.sh <hang_watchdog_test binary>
set -uo pipefail
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
TG_TEST_WATCHDOG_SECONDS=2 "$1" >"$out" 2>&1
rc=$?
took=$(($(date +%s) - start))
cat "$out"
fail() { echo "hang_watchdog_check: FAIL: $*" >&2; exit 1; }
[ "$rc" = 134 ] || fail "exit status $rc, want 134 (SIGABRT)"
grep -q "HangWatchdog.DumpsEveryThreadAndTheChildrenThenAborts is still running after 2 s" "$out" ||
  fail "no watchdog header naming the test"
grep -q "WedgedOnPurposeWaitingForAWakeUpThatNeverComes" "$out" ||
  fail "the wedged thread's function is not in the dump"
grep -Eq "Thread [0-9]+ .*main|in main \(" "$out" || grep -q "HangWatchdog_DumpsEveryThread" "$out" ||
  fail "the main thread's stack (the test body) is not in the dump"
child=$(sed -n 's/^child process \([0-9]*\)$/\1/p' "$out")
[ -n "$child" ] || fail "the test did not report its child"
grep -q "stacks of process $child (sleep)" "$out" || fail "the child's stacks were not dumped"
grep -q "nanosleep" "$out" || fail "the child's stack (sleep → nanosleep) is not in the dump"
sleep 0.2
# Gone, or a zombie waiting for whoever inherited it: either way no longer running.
if [ -r "/proc/$child/stat" ] && ! sed 's/.*) //' "/proc/$child/stat" | grep -q '^Z'; then
  kill "$child"
  fail "the child $child outlived the abort"
fi
echo "hang_watchdog_check: ok (aborted with stacks after ${took} s)"
