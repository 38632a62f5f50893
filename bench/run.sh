#!/usr/bin/env bash
# Tollgate's benchmark, one command: Tollgate against a bare upstream, nginx and the Portkey
# gateway, all on 127.0.0.1 against the same mock upstream, measured in the same run, reported
# as ratios (see bench/README.md for every scenario and knob).
#   bench/run.sh                           every scenario but the profile (< 10 min)
#   bench/run.sh --scenarios=throughput    only some: throughput,rates,streaming,streams,billing,
#                                          startup,profile (comma-separated; "all" = the default set)
#   bench/run.sh --profile                 the default set plus a perf profile of the edge
# Results: $BENCH_OUT (default build/bench-results/<UTC time>/): results.json, results.md, raw.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${BENCH_SECONDS:-10}               # each closed-loop (wrk) phase
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
RATE_SECS=${BENCH_RATE_SECONDS:-8}      # each fixed-rate (open-loop) phase
RATE_LEVELS=${BENCH_RATE_LEVELS:-25 50 75}  # % of Tollgate's (--target=all) measured max
STREAM_RATE=${BENCH_STREAM_RATE:-50}    # streaming requests/s in the TTFB phase
STREAM_CHUNKS=${BENCH_STREAM_CHUNKS:-20}
STREAM_DELAY_MS=${BENCH_STREAM_DELAY_MS:-10}
STREAMS=${BENCH_STREAMS:-10000}         # concurrently held streams (edges' RSS)
STREAM_EDGES=${BENCH_STREAM_EDGES:-2}   # split edges they are spread over (2 fds a stream each)
STREAM_OPEN_RATE=${BENCH_STREAM_OPEN_RATE:-1000}  # streams opened per second
HOLD_MODEL=${BENCH_HOLD_MODEL:-mock-chunks-240-delay-500}  # 2 minutes of events: outlives the measurement
BILLING_RECORDS=${BENCH_BILLING_RECORDS:-20000}
BILLING_BATCH=${BENCH_BILLING_BATCH:-200}
PROFILE_SECS=${BENCH_PROFILE_SECONDS:-8}
PERF_CALLGRAPH=${BENCH_PERF_CALLGRAPH:-dwarf,16384}  # the build keeps no frame pointers: dwarf
CONTENDERS=${BENCH_CONTENDERS:-direct,nginx,portkey,split,all}
SCENARIOS=${BENCH_SCENARIOS:-all}
for a in "$@"; do
  case "$a" in
    --scenarios=*) SCENARIOS=${a#--scenarios=} ;;
    --contenders=*) CONTENDERS=${a#--contenders=} ;;
    --profile) SCENARIOS="$SCENARIOS,profile" ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "bench: unknown option $a (see bench/README.md)" >&2; exit 2 ;;
  esac
done
SCENARIOS=${SCENARIOS//all/throughput,rates,streaming,streams,billing,startup}
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
has() { [[ ",$CONTENDERS," == *",$1,"* ]]; }
BUILD=${BUILD_DIR:-$ROOT/build}
export BUILD_DIR=$BUILD
OUT=${BENCH_OUT:-$BUILD/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"; : >"$OUT/raw.jsonl"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk nginx-light >/dev/null
  else
    echo "bench: needs wrk and nginx: sudo apt-get install -y wrk nginx-light" >&2; exit 1
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
"$ROOT/scripts/build.sh" tollgate tollgatectl tollgate-mock-upstream tollgate-bench-load >/dev/null
LOAD=$BUILD/bench/tollgate-bench-load
TOLLGATE=$BUILD/cmd/tollgate/tollgate
if has portkey && [ ! -f "$ROOT/bench/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  (cd "$ROOT/bench" && npm ci --no-audit --no-fund >/dev/null 2>&1) ||
    { echo "bench: npm ci in bench/ failed; Portkey left out" >&2; CONTENDERS=${CONTENDERS//portkey/}; }
fi

# Descriptors: every process started from here inherits the hard limit as its soft one. A held
# stream is one socket in the load generator and the mock, two in the edge that proxies it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if want streams; then
  [[ $STREAM_EDGES =~ ^[1-9][0-9]?$ ]] || { echo "bench: BENCH_STREAM_EDGES must be 1..99" >&2; exit 2; }
  per_edge=$(( (STREAMS + STREAM_EDGES - 1) / STREAM_EDGES ))
  if [ $((2 * per_edge + 512)) -gt "$(ulimit -n)" ] || [ $((STREAMS + 512)) -gt "$(ulimit -n)" ]; then
    echo "bench: $STREAMS streams over $STREAM_EDGES edge(s) need $((2 * per_edge + 512)) fds per edge and $((STREAMS + 512)) for the mock and the load generator; the limit is $(ulimit -n) (raise BENCH_STREAM_EDGES or ulimit -Hn)" >&2
    exit 2
  fi
fi

WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX); chmod 755 "$WORK"
free_port() { local p; for _ in $(seq 1 50); do p=$((20000 + RANDOM % 20000)); (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; return 1; }
pick_ports() {
  local m; m=$(free_port)  # split mode also uses the 4 ports after the edge's metrics port
  while (exec 3<>/dev/tcp/127.0.0.1/$((m+1))) 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/$((m+4))) 2>/dev/null; do m=$(free_port); done
  export TG_STATE_DIR=$WORK/state-$1 TG_PG_PORT=$(free_port) TG_EDGE_LISTEN=127.0.0.1:$(free_port) \
    TG_METRICS_LISTEN=127.0.0.1:$m
  local base; base=$(free_port); while (exec 3<>/dev/tcp/127.0.0.1/$((base+3))) 2>/dev/null; do base=$(free_port); done
  export TG_GRPC_BASE=$base
}
export TOLLGATE_LOG__LEVEL=warn
PORTKEY_PID=
EXTRA_EDGE_PIDS=()  # streams: the edges started beside the launcher's (it does not know them)
stop_extra_edges() {
  local p
  for p in "${EXTRA_EDGE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${EXTRA_EDGE_PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  EXTRA_EDGE_PIDS=()
}
cleanup() {
  stop_extra_edges
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [ -n "$PORTKEY_PID" ] && kill "$PORTKEY_PID" 2>/dev/null || true
  [ -n "${TG_STATE_DIR:-}" ] && "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
emit() { echo "$1" >>"$OUT/raw.jsonl"; }  # one JSON object per measurement
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo -1; }
note() { printf 'bench: %s\n' "$*" >&2; }

# Starts the suite with the launcher (mode "all" or "split"); ports are probed, not reserved,
# so one can be taken before the suite binds it: then try new ones.
suite_up() {
  local mode=$1 attempt flags=(--detach)
  [ "$mode" = split ] && flags+=(--split)
  for attempt in 1 2 3; do
    pick_ports "$mode"
    if "$ROOT/scripts/run.sh" up "${flags[@]}" >"$WORK/launcher-$mode.log" 2>&1; then break; fi
    tail -n 5 "$WORK/launcher-$mode.log" >&2
    "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true
    rm -rf "$TG_STATE_DIR"
    [ "$attempt" -lt 3 ] || { cat "$WORK/launcher-$mode.log" >&2; echo "bench: the suite did not start (3 attempts)" >&2; exit 1; }
    note "start-up failed (a port taken meanwhile?); trying other ports"
  done
  # The launcher's demo key: every request goes through real authentication.
  export BENCH_API_KEY=$(cat "$TG_STATE_DIR/secrets/demo_api_key")
  MOCK_PORT=$(cat "$TG_STATE_DIR/mock.port")
  CTL=("$BUILD/cmd/tollgate/tollgatectl" --admin-token-file="$TG_STATE_DIR/secrets/admin_token")
}
suite_down() { "$ROOT/scripts/run.sh" down >/dev/null 2>&1 || true; }

CHAT_BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
STREAM_MODEL=mock-chunks-$STREAM_CHUNKS-delay-$STREAM_DELAY_MS
stream_body() { echo "{\"model\":\"$1\",\"stream\":true,\"max_tokens\":300,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in five words.\"}]}"; }

# routable EDGE_LISTEN MODEL: a small request for MODEL answered 200 through that edge (20 s at most).
routable() {
  local i
  for i in $(seq 1 100); do
    curl -fsS -o /dev/null "http://$1/v1/chat/completions" -H "Authorization: Bearer $BENCH_API_KEY" \
      -H 'Content-Type: application/json' -d "{\"model\":\"$2\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "bench: model $2 not routable through the edge on $1 after 20 s" >&2; exit 1
}

# A model the mock reads its knobs from (mock-chunks-N-delay-MS), routed, priced, and usable
# through the edge before this returns.
add_model() {
  local m=$1 grpc3=$((TG_GRPC_BASE + 2)) grpc4=$((TG_GRPC_BASE + 3)) id i
  id=$("${CTL[@]}" --addr=127.0.0.1:$grpc3 router list-providers | awk 'NR>1 && $2=="mock" {print $1}')
  "${CTL[@]}" --addr=127.0.0.1:$grpc3 router create-model --name="$m" --owned-by=mock --max-output-tokens=0 >/dev/null 2>&1 || true
  "${CTL[@]}" --addr=127.0.0.1:$grpc3 router set-model-route --model="$m" --provider-id="$id" >/dev/null
  "${CTL[@]}" --addr=127.0.0.1:$grpc4 billing set-price --model="$m" --input-micros-per-mtok=1000 \
    --output-micros-per-mtok=1000 --cached-input-micros-per-mtok=1000 >/dev/null
  routable "$TG_EDGE_LISTEN" "$m"
}

# start_edge N: one more split edge beside the launcher's, with the same generated config and
# services but its own listen and metrics ports and spool; sets EDGE_LISTEN_N once it is ready.
# Ports are probed, not reserved (one may be taken before the edge binds it): 3 tries.
start_edge() {
  local n=$1 listen metrics pid attempt log
  log=$TG_STATE_DIR/logs/edge$n.log
  for attempt in 1 2 3; do
    listen=127.0.0.1:$(free_port); metrics=127.0.0.1:$(free_port)
    [ "$listen" != "$metrics" ] || continue
    env "TOLLGATE_EDGE__LISTEN=$listen" "TOLLGATE_METRICS__LISTEN=$metrics" \
      "TOLLGATE_EDGE__SPOOL_DIR=$TG_STATE_DIR/spool-edge$n" \
      "TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_FILE=$TG_STATE_DIR/secrets/edge_token" \
      "$TOLLGATE" serve --config="$TG_STATE_DIR/tollgate.yaml" --target=edge >>"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
      curl -fsS -o /dev/null "http://$listen/readyz" 2>/dev/null && { EXTRA_EDGE_PIDS+=("$pid"); EDGE_LISTEN_N=$listen; return 0; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    tail -n 5 "$log" >&2
    note "edge $n did not start on $listen (metrics $metrics), attempt $attempt of 3"
  done
  echo "bench: edge $n did not start (log: $log)" >&2; exit 1
}

# wrk, closed loop: run CONTENDER URL [extra wrk args] → a throughput record; prints "rps p50 p99".
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else printf "%.3f", v*1000 }'; }
wrk_run() {
  local name=$1 url=$2; shift 2
  quiesce
  wrk -t1 -c4 -d1s -s "$ROOT/bench/chat.lua" "$@" "$url/v1/chat/completions" >/dev/null  # warm-up
  local out rps p50 p90 p99 errors
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -s "$ROOT/bench/chat.lua" "$@" "$url/v1/chat/completions")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p90=$(to_ms "$(awk '$1=="90%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  # wrk prints no Non-2xx line when every answer was 2xx.
  [ -z "$errors" ] || { echo "bench: $errors non-2xx answers from $name" >&2; echo "$out" >&2; exit 1; }
  emit "{\"scenario\":\"throughput\",\"contender\":\"$name\",\"connections\":$CONNS,\"seconds\":$SECS,\"rps\":$rps,\"p50_ms\":$p50,\"p90_ms\":$p90,\"p99_ms\":$p99}"
  echo "$rps $p50 $p99"
}

# Contenders' base URLs and extra headers (the same request body everywhere).
PORTKEY_HEADERS=()
url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$MOCK_PORT" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT" ;;
    portkey) echo "http://127.0.0.1:$PORTKEY_PORT" ;;
    split|all) echo "http://$TG_EDGE_LISTEN" ;;
  esac
}
# Waits (at most 15 s) until the machine's CPUs are mostly idle, so one contender's backlog (an
# overloaded Portkey still working off its queue, a suite's last batches) does not load the next
# contender's run.
quiesce() {
  local _i a b
  for _i in $(seq 1 30); do
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    sleep 0.5
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
      exit !((y[2] - x[2]) > 0 && (y[1] - x[1]) * 100 < 25 * (y[2] - x[2])) }' && return 0
  done
  return 0
}
load() {  # load SCENARIO CONTENDER [tollgate-bench-load args]: one open-loop run, recorded
  local scenario=$1 name=$2 hdrs=(); shift 2
  quiesce
  [ "$name" = portkey ] && hdrs=("${PORTKEY_HEADERS[@]/#/--header=}")
  local json
  json=$("$LOAD" --url="$(url_of "$name")/v1/chat/completions" --label="$name" \
    --header='Authorization: Bearer ${BENCH_API_KEY}' "${hdrs[@]}" "$@")
  emit "{\"scenario\":\"$scenario\",\"contender\":\"$name\",\"result\":$json}"
  echo "$json"
}

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
START_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# ---- Split mode: start-up and idle RSS per service, its throughput, N held streams ----------
if want startup || want streams || { want throughput && has split; }; then
  note "split mode: one process per service"
  suite_up split
  if want startup; then
    # Each target stopped and started again on its own while the others run (a warm restart:
    # database up, migrations applied), timed from exec to its health answering, then its RSS.
    SERVICES=(auth quota router billing)
    for t in auth quota router billing edge; do
      pid=$(cat "$TG_STATE_DIR/$t.pid"); kill -TERM "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      if [ "$t" = edge ]; then mlisten=$TG_METRICS_LISTEN; else
        for i in "${!SERVICES[@]}"; do [ "${SERVICES[$i]}" = "$t" ] && mlisten=${TG_METRICS_LISTEN%:*}:$((${TG_METRICS_LISTEN##*:} + 1 + i)) && gport=$((TG_GRPC_BASE + i)); done
      fi
      t0=$(date +%s%N)
      env "TOLLGATE_METRICS__LISTEN=$mlisten" "TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_FILE=$TG_STATE_DIR/secrets/edge_token" \
        "$TOLLGATE" serve --config="$TG_STATE_DIR/tollgate.yaml" --target="$t" >>"$TG_STATE_DIR/logs/$t.log" 2>&1 &
      pid=$!; echo $pid >"$TG_STATE_DIR/$t.pid"
      ready=0
      for _ in $(seq 1 3000); do
        if [ "$t" = edge ]; then curl -fsS -o /dev/null "http://$TG_EDGE_LISTEN/readyz" 2>/dev/null && ready=1
        else "$TOLLGATE" health "127.0.0.1:$gport" >/dev/null 2>&1 && ready=1; fi
        [ $ready = 1 ] && break; sleep 0.01
      done
      t1=$(date +%s%N)
      [ $ready = 1 ] || { echo "bench: $t did not become ready" >&2; exit 1; }
      sleep 1
      emit "{\"scenario\":\"startup\",\"contender\":\"$t\",\"ready_ms\":$(( (t1 - t0) / 1000000 )),\"idle_rss_kb\":$(rss_kb "$pid")}"
    done
  fi
  if want throughput && has split; then
    read -r s_rps _ _ < <(wrk_run split "http://$TG_EDGE_LISTEN")
  fi
  if want streams; then
    add_model "$HOLD_MODEL"
    # STREAM_EDGES split edges in front of the same services (the launcher's and more), the
    # streams spread round-robin over them; each edge's RSS is its own, their sum the figure.
    EDGE_URLS=("http://$TG_EDGE_LISTEN/v1/chat/completions")
    EDGE_PID_ARGS=(--pid="$(cat "$TG_STATE_DIR/edge.pid")")
    for n in $(seq 2 "$STREAM_EDGES"); do
      start_edge "$n"
      routable "$EDGE_LISTEN_N" "$HOLD_MODEL"
      EDGE_URLS+=("http://$EDGE_LISTEN_N/v1/chat/completions")
      EDGE_PID_ARGS+=(--pid="${EXTRA_EDGE_PIDS[-1]}")
    done
    sleep 2  # the new edges' first lease and budget rounds, and their RSS settle
    note "holding $STREAMS streams through $STREAM_EDGES split edge(s) (${EDGE_PID_ARGS[*]}), opened at $STREAM_OPEN_RATE/s"
    json=$("$LOAD" "${EDGE_URLS[@]/#/--url=}" --label=split --header='Authorization: Bearer ${BENCH_API_KEY}' \
      --mode=hold --streams="$STREAMS" --open-rate="$STREAM_OPEN_RATE" --timeout=30 \
      --body="$(stream_body "$HOLD_MODEL")" "${EDGE_PID_ARGS[@]}" --pid="$(cat "$TG_STATE_DIR/mock.pid")")
    # The processes are the edges in the order of the targets, then the mock (report.mjs).
    emit "{\"scenario\":\"streams\",\"contender\":\"split\",\"edges\":$STREAM_EDGES,\"model\":\"$HOLD_MODEL\",\"open_rate\":$STREAM_OPEN_RATE,\"result\":$json}"
    # Why a stream was refused, if one was: the edges' and the mock's logs (warnings and up).
    cp "$TG_STATE_DIR/logs/edge.log" "$OUT/streams-edge.log" 2>/dev/null || true
    for n in $(seq 2 "$STREAM_EDGES"); do cp "$TG_STATE_DIR/logs/edge$n.log" "$OUT/streams-edge$n.log" 2>/dev/null || true; done
    cp "$TG_STATE_DIR/logs/mock.log" "$OUT/streams-mock.log" 2>/dev/null || true
    stop_extra_edges
  fi
  suite_down
fi

# ---- One process (--target=all) with the peers beside it ----------------------------------
NEED_ALL=0
for s in throughput rates streaming billing profile; do want $s && NEED_ALL=1; done
if [ $NEED_ALL = 1 ]; then
  note "one process (--target=all), nginx and Portkey beside it"
  suite_up all
  TG_PID=$(cat "$TG_STATE_DIR/tollgate.pid")
  NGINX_PORT=$(free_port)
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
  if has portkey; then
    PORTKEY_PORT=$(free_port)
    node "$ROOT/bench/node_modules/@portkey-ai/gateway/build/start-server.js" --port="$PORTKEY_PORT" --headless \
      >"$WORK/portkey.log" 2>&1 &
    PORTKEY_PID=$!
    PORTKEY_HEADERS=("x-portkey-provider: openai" "x-portkey-custom-host: http://127.0.0.1:$MOCK_PORT/v1")
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORTKEY_PORT) 2>/dev/null && break; sleep 0.1; done
  fi
  PEERS=(direct nginx); has portkey && PEERS+=(portkey)

  if want throughput; then
    read -r d_rps d_p50 d_p99 < <(wrk_run direct "$(url_of direct)")
    read -r n_rps n_p50 n_p99 < <(wrk_run nginx "$(url_of nginx)")
    if has portkey; then
      read -r _ _ _ < <(wrk_run portkey "$(url_of portkey)" -H "${PORTKEY_HEADERS[0]}" -H "${PORTKEY_HEADERS[1]}")
    fi
    # Each service's counters around Tollgate's run: per-request costs (report.mjs divides).
    curl -fsS "http://$TG_METRICS_LISTEN/metrics" >"$OUT/metrics-before.txt" 2>/dev/null || true
    read -r t_rps t_p50 t_p99 < <(wrk_run all "http://$TG_EDGE_LISTEN")
    sleep 2  # the usage records and settlements of the last requests leave in batches
    curl -fsS "http://$TG_METRICS_LISTEN/metrics" >"$OUT/metrics-after.txt" 2>/dev/null || true
  fi
  if want rates; then
    max=${t_rps:-${BENCH_MAX_RPS:-}}
    if [ -z "$max" ]; then read -r max _ _ < <(wrk_run all "http://$TG_EDGE_LISTEN"); fi
    for pct in $RATE_LEVELS; do
      rate=$(awk -v m="$max" -v p="$pct" 'BEGIN { printf "%.0f", m * p / 100 }')
      for c in "${PEERS[@]}" all; do
        note "open loop: $c at $rate req/s ($pct% of Tollgate's max)"
        load "rate-$pct" "$c" --rate="$rate" --duration="$RATE_SECS" --body="$CHAT_BODY" >/dev/null
      done
    done
  fi
  if want streaming; then
    add_model "$STREAM_MODEL"
    for c in "${PEERS[@]}" all; do
      note "streaming: $c, $STREAM_RATE streams/s of $STREAM_CHUNKS chunks ${STREAM_DELAY_MS} ms apart"
      load streaming "$c" --stream --rate="$STREAM_RATE" --duration="$RATE_SECS" --body="$(stream_body "$STREAM_MODEL")" >/dev/null
    done
  fi
  if want billing; then
    uid=$("${CTL[@]}" --addr="127.0.0.1:$TG_GRPC_BASE" auth list-users | awk 'NR>1 && $2=="demo" {print $1}')
    note "billing ingest: $BILLING_RECORDS records in batches of $BILLING_BATCH"
    json=$(node "$ROOT/bench/billing_ingest.mjs" "127.0.0.1:$((TG_GRPC_BASE + 3))" "$TG_STATE_DIR/secrets/edge_token" \
      "$uid" "$BILLING_RECORDS" "$BILLING_BATCH" 4)
    emit "{\"scenario\":\"billing\",\"contender\":\"billing\",\"result\":$json}"
  fi
  if want profile; then
    # perf (software clock: these VMs have no hardware events) on the one process under wrk.
    note "profiling tollgate (pid $TG_PID) for ${PROFILE_SECS}s under load"
    wrk -t"$THREADS" -c"$CONNS" -d"$((PROFILE_SECS + 2))s" -s "$ROOT/bench/chat.lua" "http://$TG_EDGE_LISTEN/v1/chat/completions" >"$OUT/profile-wrk.txt" &
    WRK_PID=$!
    sleep 1
    perf record -e cpu-clock -F 499 --call-graph "$PERF_CALLGRAPH" -p "$TG_PID" -o "$OUT/perf.data" -- sleep "$PROFILE_SECS" >/dev/null 2>&1 || note "perf record failed"
    wait $WRK_PID || true
    if [ -s "$OUT/perf.data" ]; then
      perf report -i "$OUT/perf.data" --no-children --stdio --percent-limit 0.4 -g none >"$OUT/perf-self.txt" 2>/dev/null || true
      perf report -i "$OUT/perf.data" --no-children --stdio --sort comm -g none >"$OUT/perf-threads.txt" 2>/dev/null || true
      perf report -i "$OUT/perf.data" --no-children --stdio --sort dso -g none >"$OUT/perf-dso.txt" 2>/dev/null || true
    fi
  fi
  emit "{\"scenario\":\"idle\",\"contender\":\"all\",\"rss_after_run_kb\":$(rss_kb "$TG_PID"),\"threads\":$(ls "/proc/$TG_PID/task" | wc -l)}"
  suite_down
fi
if [ -s "$OUT/perf.data" ]; then
  # Inclusive time per function (slow with dwarf stacks: minutes), once nothing is measured.
  note "perf report (inclusive): a few minutes"
  perf report -i "$OUT/perf.data" --children --stdio --sort sym --percent-limit 1 -g none >"$OUT/perf-inclusive.txt" 2>/dev/null || true
fi

cat >"$OUT/machine.json" <<JSON
{"started":"$START_TIME","finished":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","cpus":$(nproc),
 "cpu":"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)","mem_gb":$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo),
 "kernel":"$(uname -r)","load_start":"$START_LOAD","load_end":"$(cut -d' ' -f1-3 /proc/loadavg)",
 "command":"bench/run.sh $*","seconds":$SECS,"connections":$CONNS,"threads":$THREADS,"rate_seconds":$RATE_SECS,
 "streams":$STREAMS,"stream_edges":$STREAM_EDGES,"stream_model":"$STREAM_MODEL","commit":"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"}
JSON
node "$ROOT/bench/report.mjs" "$OUT"

if want throughput && [ -n "${t_rps:-}" ]; then
  awk -v t="$t_rps" -v n="$n_rps" -v tp="$t_p99" -v np="$n_p99" -v dp="$d_p99" 'BEGIN {
    printf "\nthroughput ratio tollgate/nginx: %.2f (north star >= 0.50)\n", t / n
    printf "p99 added over nginx: %+.3f ms; over the bare upstream: %+.3f ms (north star < 1 ms)\n", tp - np, tp - dp }'
fi
echo "results: $OUT/results.json, $OUT/results.md"
