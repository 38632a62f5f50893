#!/usr/bin/env bash
# The README's run command, exercised as a user would: start detached on free
# ports with a fresh state dir, check every service is healthy and /metrics
# answers, stop, start again (data reused), stop. Usage: launcher_test.sh BUILD_DIR
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
export TG_EDGE_LISTEN=127.0.0.1:$(free_port) TG_METRICS_LISTEN=127.0.0.1:$(free_port)
TOLLGATE=$BUILD_DIR/cmd/tollgate/tollgate

cleanup() { "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true; rm -rf "$TG_STATE_DIR"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -n 40 "$TG_STATE_DIR/logs/tollgate.log" 2>/dev/null || true; exit 1; }

check_up() {
  for i in 0 1 2 3; do
    "$TOLLGATE" health "127.0.0.1:$((base + i))" | grep -qx SERVING || fail "gRPC service on :$((base + i)) not SERVING"
  done
  curl -fsS "http://$TG_EDGE_LISTEN/readyz" >/dev/null || fail "edge /readyz"
  curl -fsS "http://$TG_METRICS_LISTEN/metrics" | grep -q tollgate_pg_pool_connections || fail "/metrics"
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
echo "launcher test passed"
