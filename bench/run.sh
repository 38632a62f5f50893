#!/usr/bin/env bash
# Throughput and latency of the full Tollgate path against a plain nginx
# proxy_pass hop to the same mock upstream, measured in the same run on the
# same box, reported as ratios. Bounded: each phase runs BENCH_SECONDS.
#   bench/run.sh            (BENCH_SECONDS=10 BENCH_CONNECTIONS=32 BENCH_THREADS=2)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
BUILD=${BUILD_DIR:-$ROOT/build}
export BUILD_DIR=$BUILD

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk nginx-light >/dev/null
  else
    echo "bench: needs wrk and nginx: sudo apt-get install -y wrk nginx-light" >&2; exit 1
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX); chmod 755 "$WORK"
free_port() { local p; for _ in $(seq 1 50); do p=$((20000 + RANDOM % 20000)); (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; return 1; }
pick_ports() {
  export TG_STATE_DIR=$WORK/state TG_PG_PORT=$(free_port) TG_EDGE_LISTEN=127.0.0.1:$(free_port) \
    TG_METRICS_LISTEN=127.0.0.1:$(free_port)
  local base; base=$(free_port); while (exec 3<>/dev/tcp/127.0.0.1/$((base+3))) 2>/dev/null; do base=$(free_port); done
  export TG_GRPC_BASE=$base
}
export TOLLGATE_LOG__LEVEL=warn
NGINX_PORT=$(free_port)
cleanup() {
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Ports are probed, not reserved: one can be taken before the suite binds it. Then try new ones.
for attempt in 1 2 3; do
  pick_ports
  if "$ROOT/scripts/run.sh" up --detach >/dev/null; then break; fi
  "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true
  rm -rf "$TG_STATE_DIR"
  [ "$attempt" -lt 3 ] || { echo "bench: the suite did not start (3 attempts)" >&2; exit 1; }
  echo "bench: start-up failed (a port taken meanwhile?); trying other ports" >&2
done
# The launcher's demo key: every request goes through real authentication.
export BENCH_API_KEY=$(cat "$TG_STATE_DIR/secrets/demo_api_key")
MOCK_PORT=$(cat "$TG_STATE_DIR/mock.port")

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" 2>/dev/null

run() {  # run NAME URL → "rps p50_ms p99_ms"
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -s "$ROOT/bench/chat.lua" "$1/v1/chat/completions")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  # wrk prints no Non-2xx line when every answer was 2xx.
  [ -z "$errors" ] || { echo "bench: $errors non-2xx answers from $1" >&2; echo "$out" >&2; exit 1; }
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else printf "%.3f", v*1000 }'; }

# Warm up each path, then measure in the same run.
wrk -t1 -c4 -d1s -s "$ROOT/bench/chat.lua" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" >/dev/null
wrk -t1 -c4 -d1s -s "$ROOT/bench/chat.lua" "http://$TG_EDGE_LISTEN/v1/chat/completions" >/dev/null
read -r d_rps d_p50 d_p99 < <(run "http://127.0.0.1:$MOCK_PORT")
read -r n_rps n_p50 n_p99 < <(run "http://127.0.0.1:$NGINX_PORT")
read -r t_rps t_p50 t_p99 < <(run "http://$TG_EDGE_LISTEN")

printf '\n%-28s %12s %10s %10s\n' "path (${CONNS} conns, ${SECS}s)" "req/s" "p50 ms" "p99 ms"
printf '%-28s %12.0f %10.3f %10.3f\n' "mock upstream direct" "$d_rps" "$d_p50" "$d_p99"
printf '%-28s %12.0f %10.3f %10.3f\n' "nginx proxy_pass -> mock" "$n_rps" "$n_p50" "$n_p99"
printf '%-28s %12.0f %10.3f %10.3f\n' "tollgate edge -> mock" "$t_rps" "$t_p50" "$t_p99"
awk -v t="$t_rps" -v n="$n_rps" -v tp="$t_p99" -v np="$n_p99" -v dp="$d_p99" 'BEGIN {
  printf "\nthroughput ratio tollgate/nginx: %.2f (north star >= 0.50)\n", t / n
  printf "p99 added over nginx: %+.3f ms; over the bare upstream: %+.3f ms (north star < 1 ms)\n", tp - np, tp - dp }'
