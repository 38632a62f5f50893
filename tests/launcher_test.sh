#!/usr/bin/env bash
# The README's run command, exercised as a user would: start detached on free
# ports with a fresh state dir, check every service is healthy and /metrics
# answers, stop, start again (data reused), stop; then the split mode (one process per target):
# kill -9 of one target, `restart`, `status`, `down`. Usage: launcher_test.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export BUILD_DIR=$1
export TG_STATE_DIR=$(mktemp -d /tmp/tollgate-launcher.XXXXXX)
chmod 755 "$TG_STATE_DIR"

free_port() {  # a port nothing listens on, from a range tests do not otherwise use
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }
  done
  return 1
}
base=$(free_port); while (exec 3<>/dev/tcp/127.0.0.1/$((base+3))) 2>/dev/null; do base=$(free_port); done
export TG_GRPC_BASE=$base TG_PG_PORT=$(free_port)
# Metrics: split mode uses the port and the 4 after it.
mbase=$(free_port); while (exec 3<>/dev/tcp/127.0.0.1/$((mbase+4))) 2>/dev/null; do mbase=$(free_port); done
export TG_EDGE_LISTEN=127.0.0.1:$(free_port) TG_METRICS_LISTEN=127.0.0.1:$mbase
TOLLGATE=$BUILD_DIR/cmd/tollgate/tollgate

cleanup() { "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true; rm -rf "$TG_STATE_DIR"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -n 20 "$TG_STATE_DIR"/logs/*.log 2>/dev/null || true; exit 1; }

check_up() {
  for i in 0 1 2 3; do
    "$TOLLGATE" health "127.0.0.1:$((base + i))" | grep -qx SERVING || fail "gRPC service on :$((base + i)) not SERVING"
  done
  curl -fsS "http://$TG_EDGE_LISTEN/readyz" >/dev/null || fail "edge /readyz"
  curl -fsS "http://${1:-$TG_METRICS_LISTEN}/metrics" | grep tollgate_pg_pool_connections >/dev/null || fail "/metrics"
}

out=$("$ROOT/scripts/run.sh" up --detach) || fail "launcher failed: $out"
echo "$out" | grep -q "http://$TG_EDGE_LISTEN/v1" || fail "banner does not say where the edge listens: $out"
check_up
echo "ok: first start, every service healthy"

# The admin CLI against the launched suite: tables, CSV, one-line errors with a non-zero exit.
CTL=("$BUILD_DIR/cmd/tollgate/tollgatectl" --admin-token-file="$TG_STATE_DIR/secrets/admin_token"
     --addr="127.0.0.1:$((base + 2))")
csv=$("${CTL[@]}" router list-upstream-keys --csv) || fail "tollgatectl --csv"
[ "$(head -n 1 <<<"$csv" | cut -d, -f1-3)" = "id,provider_id,name" ] || fail "CSV header: $csv"
[ "$(tail -n +2 <<<"$csv" | wc -l)" -ge 1 ] || fail "CSV rows: $csv"
grep -q "mock-key" <<<"$csv" && fail "an upstream secret in the CLI output"
if err=$("${CTL[@]}" router no-such-command 2>&1); then fail "unknown command succeeded"; fi
[ "$(wc -l <<<"$err")" = 1 ] || fail "error is not one line: $err"
if "$BUILD_DIR/cmd/tollgate/tollgatectl" --addr="127.0.0.1:$((base + 2))" router list-providers >/dev/null 2>&1; then
  fail "an admin RPC without the token succeeded"
fi
echo "ok: tollgatectl tables, CSV, errors, admin token required"

"$ROOT/scripts/run.sh" down >/dev/null
[ ! -f "$TG_STATE_DIR/tollgate.pid" ] || fail "pid file left behind"
! (exec 3<>/dev/tcp/127.0.0.1/$TG_PG_PORT) 2>/dev/null || fail "PostgreSQL still listening after down"
grep -q '"msg":"stopped"' "$TG_STATE_DIR/logs/tollgate.log" || fail "tollgate did not stop cleanly"
echo "ok: down stops tollgate and PostgreSQL cleanly"

"$ROOT/scripts/run.sh" up --detach >/dev/null || fail "second start"
check_up
# The second start reused the cluster: no migration was applied again.
[ "$(grep '"msg":"database ready"' "$TG_STATE_DIR/logs/tollgate.log" | tail -n 4 | grep -c '"applied":0')" = 4 ] \
  || fail "second start re-applied migrations"
echo "ok: second start reuses the data"
"$ROOT/scripts/run.sh" down >/dev/null

# Split mode: one process per target, each with its own pid, log and metrics port.
out=$("$ROOT/scripts/run.sh" up --detach --split) || fail "split start: $out"
check_up "127.0.0.1:$((mbase + 4))"  # billing's
pids=()
for t in auth quota router billing edge; do
  [ -s "$TG_STATE_DIR/$t.pid" ] && kill -0 "$(cat "$TG_STATE_DIR/$t.pid")" || fail "split: no $t process"
  [ -s "$TG_STATE_DIR/logs/$t.log" ] || fail "split: no logs/$t.log"
  pids+=("$(cat "$TG_STATE_DIR/$t.pid")")
done
[ "$(printf '%s\n' "${pids[@]}" | sort -u | wc -l)" = 5 ] || fail "split: targets share a process: ${pids[*]}"
curl -fsS "http://$TG_METRICS_LISTEN/metrics" | grep tollgate_edge_billing_spool >/dev/null || fail "split: the edge's /metrics"
for i in 1 2 3 4; do
  curl -fsS "http://127.0.0.1:$((mbase + i))/metrics" | grep tollgate_pg_pool_connections >/dev/null || fail "split: /metrics on :$((mbase + i))"
done
kill -KILL "$(cat "$TG_STATE_DIR/billing.pid")"
for _ in $(seq 1 50); do ! "$TOLLGATE" health "127.0.0.1:$((base + 3))" >/dev/null 2>&1 && break; sleep 0.1; done
st=$("$ROOT/scripts/run.sh" status)
grep -q "billing NOT running" <<<"$st" && grep -q "edge running" <<<"$st" || fail "split: status after kill -9: $st"
"$ROOT/scripts/run.sh" restart billing >/dev/null || fail "split: restart billing"
check_up "127.0.0.1:$((mbase + 4))"
[ "$(cat "$TG_STATE_DIR/edge.pid")" = "${pids[4]}" ] || fail "split: restarting billing restarted the edge"
if "$ROOT/scripts/run.sh" up --detach >/dev/null 2>&1; then :; fi  # already running: a no-op
[ "$(cat "$TG_STATE_DIR/auth.pid")" = "${pids[0]}" ] || fail "split: a second up restarted auth"
echo "ok: split mode, kill -9 of billing, restart billing"
"$ROOT/scripts/run.sh" down >/dev/null
targets=(auth quota router billing edge)
for i in 0 1 2 3 4; do
  [ ! -f "$TG_STATE_DIR/${targets[$i]}.pid" ] || fail "split: ${targets[$i]}.pid left behind"
  if kill -0 "${pids[$i]}" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/${pids[$i]}/stat" 2>/dev/null)" != Z ]; then
    [ "${targets[$i]}" = billing ] || fail "split: ${targets[$i]} still running after down"
  fi
done
grep -q '"msg":"stopped"' "$TG_STATE_DIR/logs/edge.log" || fail "split: the edge did not stop cleanly"
echo "ok: split down"
echo "launcher test passed"
