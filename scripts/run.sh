#!/usr/bin/env bash
# The Tollgate launcher.
#   scripts/run.sh [up] [--detach] [--split]
#                                    build, start PostgreSQL (embedded unless DSNs are given),
#                                    the mock upstream (unless OPENAI_API_KEY is set) and every
#                                    service; print how to call it. Ctrl-C stops everything.
#   scripts/run.sh down              stop a detached run (PostgreSQL included), either mode
#   scripts/run.sh status            show what is running
#   scripts/run.sh restart TARGET    split mode: (re)start one target (auth, quota, router,
#                                    billing, edge), e.g. after kill -9, and wait for its health
#   scripts/run.sh stacks            every thread's stack of each running Tollgate process and
#                                    the mock upstream (gdb), e.g. when a request hangs
# Default: one process, `tollgate serve --target=all` (pid tollgate.pid, log logs/tollgate.log).
# --split: one process per target, as docker-compose.yml runs them (`tollgate serve
# --target=auth` ... `--target=edge`, all with the same generated config), started in the order
# auth, quota, router, billing, edge, each health-checked before the next; pid TARGET.pid and log
# logs/TARGET.log in the state dir. Metrics: the edge on TG_METRICS_LISTEN, auth, quota, router and
# billing on its port + 1..4 (TOLLGATE_METRICS__LISTEN per process).
# State (data, logs, generated config and secrets) lives in .tollgate/ (TG_STATE_DIR); a second
# run reuses it. secrets/ (mode 600 files): admin_token (tollgatectl), edge_token (the edge's
# internal service token, given to every process), master_key (the router's), demo_api_key. Ports: TG_EDGE_LISTEN (127.0.0.1:8080), TG_GRPC_BASE (7101..7104),
# TG_METRICS_LISTEN (127.0.0.1:9464), TG_PG_PORT (55432). Any TOLLGATE_* variable is passed to
# the services as a config override (see docs/configuration.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib/pg.sh"

STATE=${TG_STATE_DIR:-$ROOT/.tollgate}
BUILD=${BUILD_DIR:-$ROOT/build}
EDGE_LISTEN=${TG_EDGE_LISTEN:-127.0.0.1:8080}
GRPC_BASE=${TG_GRPC_BASE:-7101}
METRICS_LISTEN=${TG_METRICS_LISTEN:-127.0.0.1:9464}
PG_PORT=${TG_PG_PORT:-55432}
SERVICES=(auth quota router billing)
TARGETS=(auth quota router billing edge)  # split mode: start order (stop: the reverse)
TOLLGATE=$BUILD/cmd/tollgate/tollgate
MOCK=$BUILD/tools/mock_upstream/tollgate-mock-upstream

say() { printf 'tollgate: %s\n' "$*"; }
die() { printf 'tollgate: %s\n' "$*" >&2; exit 1; }
alive() {  # alive PIDFILE: the process runs (a zombie waiting for a slow-reaping init does not)
  local pid
  [ -f "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
grpc_port() { local i; for i in "${!SERVICES[@]}"; do [ "${SERVICES[$i]}" = "$1" ] && echo $((GRPC_BASE + i)); done; }
external_db() {
  local s v
  for s in "${SERVICES[@]}"; do
    v="TOLLGATE_${s^^}__DATABASE__DSN"
    [ -n "${!v:-}" ] || return 1
  done
}

dump_stacks() {  # dump_stacks PID: every thread's stack, where a shutdown hangs (needs gdb)
  if command -v gdb >/dev/null; then
    timeout 20 gdb -nx -batch -p "$1" -iex 'set debuginfod enabled off' -ex 'set pagination off' \
      -ex 'thread apply all bt' </dev/null 2>&1 || true
  else
    echo "tollgate: no gdb to print the stacks of $1 (scripts/deps.sh --test installs it)"
  fi
}

stop_pid() {  # stop_pid FILE NAME: SIGTERM, wait for a clean exit, then SIGKILL
  local file=$1 name=$2 pid i
  alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do alive "$file" || break; sleep 0.1; done
  if alive "$file"; then
    say "$name did not stop in 15 s; its threads' stacks follow (stderr), then it is killed"
    dump_stacks "$pid" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stacks() {
  local f t files=("$STATE/tollgate.pid")
  for t in "${TARGETS[@]}"; do files+=("$STATE/$t.pid"); done
  for f in "${files[@]}" "$STATE"/edge-*.pid "$STATE/mock.pid"; do
    alive "$f" || continue
    say "stacks of $(basename "$f" .pid) (pid $(cat "$f")):"
    dump_stacks "$(cat "$f")"
  done
}

split_running() { local t; for t in "${TARGETS[@]}"; do alive "$STATE/$t.pid" && return 0; done; return 1; }
running() { alive "$STATE/tollgate.pid" || split_running; }

down() {
  local i
  stop_pid "$STATE/tollgate.pid" tollgate
  for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do stop_pid "$STATE/${TARGETS[$i]}.pid" "${TARGETS[$i]}"; done
  stop_pid "$STATE/mock.pid" "mock upstream"
  if [ -d "$STATE/pg/data" ] && pg_running "$STATE/pg"; then pg_stop "$STATE/pg"; fi
  say "stopped"
}

status() {
  local t
  if alive "$STATE/tollgate.pid"; then
    say "tollgate running (pid $(cat "$STATE/tollgate.pid"), every target in one process)"
  elif [ -n "$(for t in "${TARGETS[@]}"; do [ -f "$STATE/$t.pid" ] && echo "$t"; done)" ]; then
    for t in "${TARGETS[@]}"; do
      if alive "$STATE/$t.pid"; then say "$t running (pid $(cat "$STATE/$t.pid"))"
      elif [ -f "$STATE/$t.pid" ]; then say "$t NOT running (pid $(cat "$STATE/$t.pid") gone; scripts/run.sh restart $t)"
      else say "$t not running"; fi
    done
  else
    say "tollgate not running"
  fi
  alive "$STATE/mock.pid" && say "mock upstream running (pid $(cat "$STATE/mock.pid"))" || true
  [ -d "$STATE/pg/data" ] && pg_running "$STATE/pg" && say "PostgreSQL running on 127.0.0.1:$PG_PORT" || true
}

secret() {  # secret NAME BYTES: a random hex secret, created once
  local f="$STATE/secrets/$1"
  [ -s "$f" ] || (umask 077; head -c "$2" /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
  echo "$f"
}

# The edge's internal service token (grpc.service_tokens.edge), for every process in both modes:
# without it, the services refuse the data path to whoever reaches their ports. Passed through
# the environment so state dirs configured before it existed get it too.
service_token_env() { echo "TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_FILE=$(secret edge_token 32)"; }

write_config() {
  local dsn_host=$1
  {
    echo "# Generated by scripts/run.sh; edit freely, it is not overwritten."
    echo "log:"
    echo "  level: info"
    echo "metrics:"
    echo "  listen: $METRICS_LISTEN"
    echo "admin:"
    echo "  token_file: $(secret admin_token 24)"
    echo "edge:"
    echo "  listen: $EDGE_LISTEN"
    echo "  auth_target: 127.0.0.1:$(grpc_port auth)"
    echo "  quota_targets: [127.0.0.1:$(grpc_port quota)]"
    echo "  router_target: 127.0.0.1:$(grpc_port router)"
    echo "  billing_target: 127.0.0.1:$(grpc_port billing)"
    echo "  spool_dir: $STATE/spool"
    for s in "${SERVICES[@]}"; do
      echo "$s:"
      echo "  grpc_listen: 127.0.0.1:$(grpc_port "$s")"
      echo "  database:"
      echo "    dsn: \"$dsn_host dbname=tollgate_$s\""
      if [ "$s" = router ]; then echo "  master_key_file: $(secret master_key 32)"; fi
    done
  } >"$STATE/tollgate.yaml"
}

wait_ready() {
  local deadline=$((SECONDS + ${TG_START_TIMEOUT:-90})) s
  while [ $SECONDS -lt $deadline ]; do
    alive "$STATE/tollgate.pid" || { tail -n 30 "$STATE/logs/tollgate.log" >&2; die "tollgate exited during start-up (log: $STATE/logs/tollgate.log)"; }
    local ok=1
    for s in "${SERVICES[@]}"; do
      "$TOLLGATE" health "127.0.0.1:$(grpc_port "$s")" >/dev/null 2>&1 || { ok=0; break; }
    done
    [ $ok = 1 ] && curl -fsS "http://$EDGE_LISTEN/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "services not healthy after ${TG_START_TIMEOUT:-90} s (log: $STATE/logs/tollgate.log)"
}

metrics_listen() {  # metrics_listen TARGET: split mode's per-process metrics address
  local host=${METRICS_LISTEN%:*} port=${METRICS_LISTEN##*:} i
  [ "$1" = edge ] && { echo "$METRICS_LISTEN"; return; }
  for i in "${!SERVICES[@]}"; do [ "${SERVICES[$i]}" = "$1" ] && echo "$host:$((port + 1 + i))"; done
}

target_healthy() {
  if [ "$1" = edge ]; then curl -fsS "http://$EDGE_LISTEN/readyz" >/dev/null 2>&1
  else "$TOLLGATE" health "127.0.0.1:$(grpc_port "$1")" >/dev/null 2>&1; fi
}

start_target() {  # start_target TARGET: split mode; one process, then wait for its health
  local t=$1 log="$STATE/logs/$1.log" deadline=$((SECONDS + ${TG_START_TIMEOUT:-90}))
  env "TOLLGATE_METRICS__LISTEN=$(metrics_listen "$t")" "$(service_token_env)" \
    "$TOLLGATE" serve --config="$STATE/tollgate.yaml" --target="$t" >>"$log" 2>&1 &
  echo $! >"$STATE/$t.pid"
  while [ $SECONDS -lt $deadline ]; do
    alive "$STATE/$t.pid" || { tail -n 30 "$log" >&2; die "$t exited during start-up (log: $log)"; }
    target_healthy "$t" && return 0
    sleep 0.2
  done
  die "$t not healthy after ${TG_START_TIMEOUT:-90} s (log: $log)"
}

restart() {  # restart TARGET: split mode only
  local t=${1:-} known=0 x
  for x in "${TARGETS[@]}"; do [ "$x" = "$t" ] && known=1; done
  [ $known = 1 ] || die "usage: scripts/run.sh restart auth|quota|router|billing|edge"
  alive "$STATE/tollgate.pid" && die "restart needs the split mode (scripts/run.sh up --split); this run is one process"
  [ -f "$STATE/tollgate.yaml" ] || die "no configuration in $STATE: start with scripts/run.sh up --split"
  stop_pid "$STATE/$t.pid" "$t"
  start_target "$t"
  say "$t running (pid $(cat "$STATE/$t.pid"))"
}

up() {
  local detach=0 split=0 a
  for a in "$@"; do
    case "$a" in
      --detach) detach=1 ;;
      --split) split=1 ;;
      *) die "unknown option $a (usage: scripts/run.sh up [--detach] [--split])" ;;
    esac
  done
  if running; then say "already running (scripts/run.sh down to stop)"; banner; return 0; fi
  "$ROOT/scripts/deps.sh"
  say "building (first time: a few minutes)"
  "$ROOT/scripts/build.sh" tollgate tollgatectl tollgate-mock-upstream >/dev/null
  mkdir -p "$STATE/secrets" "$STATE/logs"

  local dsn_host
  if external_db; then
    say "using the PostgreSQL DSNs from the environment"
    dsn_host="host=127.0.0.1"  # overridden by TOLLGATE_*__DATABASE__DSN
  else
    pg_init "$STATE/pg"
    pg_running "$STATE/pg" || pg_start "$STATE/pg" "$PG_PORT" 127.0.0.1
    for s in "${SERVICES[@]}"; do
      if ! "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc \
          "SELECT 1 FROM pg_database WHERE datname='tollgate_$s'" | grep -q 1; then
        "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE tollgate_$s"
      fi
    done
    say "PostgreSQL on 127.0.0.1:$PG_PORT (data in $STATE/pg)"
    dsn_host="host=127.0.0.1 port=$PG_PORT user=postgres"
  fi
  [ -f "$STATE/tollgate.yaml" ] || write_config "$dsn_host"

  if [ -z "${OPENAI_API_KEY:-}" ] && ! alive "$STATE/mock.pid"; then
    rm -f "$STATE/mock.port"
    "$MOCK" --listen=127.0.0.1:0 --port-file="$STATE/mock.port" >"$STATE/logs/mock.log" 2>&1 &
    echo $! >"$STATE/mock.pid"
    for _ in $(seq 1 100); do [ -s "$STATE/mock.port" ] && break; sleep 0.05; done
    [ -s "$STATE/mock.port" ] || die "mock upstream did not start (log: $STATE/logs/mock.log)"
  fi

  if [ $split = 1 ]; then
    for a in "${TARGETS[@]}"; do start_target "$a"; done
  else
    env "$(service_token_env)" \
      "$TOLLGATE" serve --config="$STATE/tollgate.yaml" --target=all >>"$STATE/logs/tollgate.log" 2>&1 &
    echo $! >"$STATE/tollgate.pid"
    wait_ready
  fi
  [ -x "$ROOT/scripts/seed.sh" ] && TG_STATE_DIR=$STATE "$ROOT/scripts/seed.sh"
  banner
  if [ $detach = 1 ]; then return 0; fi
  trap 'echo; down; exit 0' INT TERM
  say "press Ctrl-C to stop"
  if [ $split = 1 ]; then
    # One target may die and be restarted (scripts/run.sh restart TARGET); stop when none is left.
    local reported=" "
    while split_running; do
      for a in "${TARGETS[@]}"; do
        if ! alive "$STATE/$a.pid"; then
          [[ $reported == *" $a "* ]] || { say "$a exited; see $STATE/logs/$a.log (scripts/run.sh restart $a)"; reported+="$a "; }
        else reported=${reported/ $a / }; fi
      done
      sleep 1
    done
    say "every target exited; see $STATE/logs/"
  else
    while alive "$STATE/tollgate.pid"; do sleep 1; done
    say "tollgate exited; see $STATE/logs/tollgate.log"
  fi
  down
  exit 1
}

banner() {
  local key_file="$STATE/secrets/demo_api_key" key="<your Tollgate API key>"
  [ -s "$key_file" ] && key=$(cat "$key_file")
  cat <<MSG

  Tollgate is up.
    OpenAI-compatible API   http://$EDGE_LISTEN/v1
    Metrics                 http://$METRICS_LISTEN/metrics
    gRPC services           auth :$(grpc_port auth)  quota :$(grpc_port quota)  router :$(grpc_port router)  billing :$(grpc_port billing)
    Upstream                $( [ -n "${OPENAI_API_KEY:-}" ] && echo "OpenAI (OPENAI_API_KEY)" || echo "mock upstream on 127.0.0.1:$(cat "$STATE/mock.port" 2>/dev/null)")
    Logs                    $STATE/logs/

  Try it:
    curl http://$EDGE_LISTEN/v1/chat/completions -H "Authorization: Bearer $key" \\
      -H 'Content-Type: application/json' \\
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'

  Or with the openai SDK:  new OpenAI({ baseURL: "http://$EDGE_LISTEN/v1", apiKey: "$key" })
  Stop: Ctrl-C, or scripts/run.sh down

MSG
}

case "${1:-up}" in
  up) shift || true; up "$@" ;;
  --detach|--split) up "$@" ;;
  down|stop) down ;;
  status) status ;;
  restart) shift; restart "${1:-}" ;;
  stacks) stacks ;;
  *) die "usage: scripts/run.sh [up [--detach] [--split]|down|status|restart TARGET|stacks]" ;;
esac
