#!/usr/bin/env bash
# Instructions per request, per service: deterministic enough to compare a change on a shared,
# noisy box where req/s is not.
#
#   bench/callgrind.sh [--targets=edge,quota] [--requests=N] [--rate=R] [--label=NAME]
#   bench/callgrind.sh --streams=N [--label=NAME]    the edge's heap while N streams are held
#
# Starts the split suite (scripts/run.sh up --split, private ports and state), restarts each of
# --targets under `valgrind --tool=callgrind` with instrumentation off, warms up, turns it
# on, sends exactly N small chat requests (tollgate-bench-load, open loop at R/s, N = R × S), dumps
# the counters and prints one line per target: instructions (Ir) in total and per request, plus
# the top functions (self) into $BENCH_OUT (default build/bench-results/callgrind-<time>/).
# Extra environment (TOLLGATE_*) reaches every service, e.g. TOLLGATE_QUOTA__LEASE_TTL=0 to put
# every admission on quota's central path. Bounded: N requests, 10 s per request.
# --streams=N: the edge under `valgrind --tool=massif` instead, N streaming requests held open
# at once (tollgate-bench-load --mode=hold, the mock's two-minute streams); ms_print's report of
# the heap's peak, by allocation site, goes to $BENCH_OUT/LABEL.massif.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
TARGETS=edge,quota
REQUESTS=2000
RATE=50
LABEL=run
STREAMS=0
for a in "$@"; do
  case $a in
    --targets=*) TARGETS=${a#*=} ;;
    --requests=*) REQUESTS=${a#*=} ;;
    --rate=*) RATE=${a#*=} ;;
    --label=*) LABEL=${a#*=} ;;
    --streams=*) STREAMS=${a#*=}; TARGETS=edge ;;
    *) echo "usage: bench/callgrind.sh [--targets=edge,quota] [--requests=N] [--rate=R] [--label=NAME]" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "bench: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
OUT=${BENCH_OUT:-$BUILD/bench-results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
"$ROOT/scripts/build.sh" tollgate tollgatectl tollgate-mock-upstream tollgate-bench-load >/dev/null
LOAD=$BUILD/bench/tollgate-bench-load
TOLLGATE=$BUILD/cmd/tollgate/tollgate

WORK=$(mktemp -d /tmp/tollgate-callgrind.XXXXXX); chmod 755 "$WORK"
# A snapshot of the launcher and the binaries (BENCH_TOLLGATE_BIN: another tollgate binary, e.g. an
# older commit's), so that what is measured does not change with builds during the run.
mkdir -p "$WORK/root/scripts" "$WORK/build/cmd/tollgate" "$WORK/build/tools/mock_upstream"
cp -r "$ROOT/scripts/." "$WORK/root/scripts/"
printf '#!/bin/sh\nexit 0\n' >"$WORK/root/scripts/build.sh"
printf '#!/bin/sh\nexit 0\n' >"$WORK/root/scripts/deps.sh"
cp "${BENCH_TOLLGATE_BIN:-$TOLLGATE}" "$WORK/build/cmd/tollgate/tollgate"
cp "$BUILD/cmd/tollgate/tollgatectl" "$WORK/build/cmd/tollgate/"
cp "$BUILD/tools/mock_upstream/tollgate-mock-upstream" "$WORK/build/tools/mock_upstream/"
cp "$LOAD" "$WORK/load"; LOAD=$WORK/load
TOLLGATE=$WORK/build/cmd/tollgate/tollgate
RUN=("$WORK/root/scripts/run.sh")
export BUILD_DIR=$WORK/build
free_port() { local p; for _ in $(seq 1 50); do p=$((20000 + RANDOM % 20000)); (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; return 1; }
m=$(free_port)
while (exec 3<>/dev/tcp/127.0.0.1/$((m+1))) 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/$((m+4))) 2>/dev/null; do m=$(free_port); done
base=$(free_port); while (exec 3<>/dev/tcp/127.0.0.1/$((base+3))) 2>/dev/null; do base=$(free_port); done
export TG_STATE_DIR=$WORK/state TG_PG_PORT=$(free_port) TG_EDGE_LISTEN=127.0.0.1:$(free_port) \
  TG_METRICS_LISTEN=127.0.0.1:$m TG_GRPC_BASE=$base TOLLGATE_LOG__LEVEL=warn
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${RUN[@]}" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"${RUN[@]}" up --detach --split >"$WORK/launcher.log" 2>&1 || { cat "$WORK/launcher.log" >&2; exit 1; }
export BENCH_API_KEY=$(cat "$TG_STATE_DIR/secrets/demo_api_key")
TOKEN_ENV="TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_FILE=$TG_STATE_DIR/secrets/edge_token"  # as scripts/run.sh
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
grpc_port() { case $1 in auth) echo "$base" ;; quota) echo $((base + 1)) ;; router) echo $((base + 2)) ;; billing) echo $((base + 3)) ;; esac; }
metrics_of() { case $1 in edge) echo "127.0.0.1:$m" ;; auth) echo "127.0.0.1:$((m + 1))" ;; quota) echo "127.0.0.1:$((m + 2))" ;; router) echo "127.0.0.1:$((m + 3))" ;; billing) echo "127.0.0.1:$((m + 4))" ;; esac; }
healthy() {
  if [ "$1" = edge ]; then curl -fsS "http://$TG_EDGE_LISTEN/readyz" >/dev/null 2>&1
  else "$TOLLGATE" health "127.0.0.1:$(grpc_port "$1")" >/dev/null 2>&1; fi
}
chat() { curl -fsS -o /dev/null "http://$TG_EDGE_LISTEN/v1/chat/completions" -H "Authorization: Bearer $BENCH_API_KEY" -H 'Content-Type: application/json' -d "$BODY"; }

# Each target again, under callgrind (collection off until the measured part).
declare -A VG
for t in ${TARGETS//,/ }; do
  TOOL=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.$LABEL.$t")
  [ "$STREAMS" -gt 0 ] && TOOL=(valgrind --tool=massif --massif-out-file="$OUT/massif.$LABEL.edge")
  pid=$(cat "$TG_STATE_DIR/$t.pid")
  kill -TERM "$pid"; for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  env "TOLLGATE_METRICS__LISTEN=$(metrics_of "$t")" "$TOKEN_ENV" \
    "${TOOL[@]}" \
    "$TOLLGATE" serve --config="$TG_STATE_DIR/tollgate.yaml" --target="$t" >"$OUT/$LABEL.$t.log" 2>&1 &
  VG[$t]=$!; PIDS+=($!)
  for _ in $(seq 1 600); do healthy "$t" && break; sleep 0.2; done
  healthy "$t" || { tail -n 20 "$OUT/$LABEL.$t.log" >&2; echo "bench: $t under valgrind not healthy" >&2; exit 1; }
done
for _ in $(seq 1 100); do chat 2>/dev/null && break; sleep 0.3; done
if [ "$STREAMS" -gt 0 ]; then
  # A model whose streams outlive the measurement (the mock's knobs in its name), as bench/run.sh.
  HOLD_MODEL=mock-chunks-240-delay-500
  CTL=("$BUILD/cmd/tollgate/tollgatectl" --admin-token-file="$TG_STATE_DIR/secrets/admin_token")
  id=$("${CTL[@]}" --addr=127.0.0.1:$((base + 2)) router list-providers | awk 'NR>1 && $2=="mock" {print $1}')
  "${CTL[@]}" --addr=127.0.0.1:$((base + 2)) router create-model --name="$HOLD_MODEL" --owned-by=mock --max-output-tokens=0 >/dev/null
  "${CTL[@]}" --addr=127.0.0.1:$((base + 2)) router set-model-route --model="$HOLD_MODEL" --provider-id="$id" >/dev/null
  "${CTL[@]}" --addr=127.0.0.1:$((base + 3)) billing set-price --model="$HOLD_MODEL" --input-micros-per-mtok=1000 \
    --output-micros-per-mtok=1000 --cached-input-micros-per-mtok=1000 >/dev/null
  BODY="{\"model\":\"$HOLD_MODEL\",\"stream\":true,\"max_tokens\":300,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in five words.\"}]}"
  for _ in $(seq 1 100); do chat 2>/dev/null && break; sleep 0.3; done  # routable (the whole stream)
  "$LOAD" --url="http://$TG_EDGE_LISTEN/v1/chat/completions" --header='Authorization: Bearer ${BENCH_API_KEY}' \
    --mode=hold --streams="$STREAMS" --open-rate=200 --timeout=60 --body="$BODY" \
    --pid="${VG[edge]}" --label="$LABEL" >"$OUT/$LABEL.hold.json"
  kill -TERM "${VG[edge]}"; wait "${VG[edge]}" 2>/dev/null || true
  ms_print "$OUT/massif.$LABEL.edge" >"$OUT/$LABEL.massif.txt"
  peak=$(awk '/^ *[0-9]+ +[0-9,]+ +[0-9,]+ +[0-9,]+ +[0-9,]+ +[0-9,]+$/ {gsub(",", "", $3); if ($3 + 0 > m + 0) m = $3 + 0} END {print m}' "$OUT/$LABEL.massif.txt")
  echo "{\"label\":\"$LABEL\",\"streams\":$STREAMS,\"hold\":$(cat "$OUT/$LABEL.hold.json"),\"heap_peak_bytes\":${peak:-0}}" | tee -a "$OUT/massif.jsonl"
  exit 0
fi
# Warm-up: caches, connection pools, leases, the spool's first file.
"$LOAD" --url="http://$TG_EDGE_LISTEN/v1/chat/completions" --header='Authorization: Bearer ${BENCH_API_KEY}' \
  --body="$BODY" --rate="$RATE" --duration=3 --max-conns=16 >/dev/null
sleep 1
for t in ${TARGETS//,/ }; do callgrind_control -i on "${VG[$t]}" >/dev/null; done
secs=$(awk -v n="$REQUESTS" -v r="$RATE" 'BEGIN { printf "%.3f", n / r }')
"$LOAD" --url="http://$TG_EDGE_LISTEN/v1/chat/completions" --header='Authorization: Bearer ${BENCH_API_KEY}' \
  --body="$BODY" --rate="$RATE" --duration="$secs" --max-conns=16 --label="$LABEL" >"$OUT/$LABEL.load.json"
sleep 1  # settlements and records batched behind the last answers
for t in ${TARGETS//,/ }; do callgrind_control -d "${VG[$t]}" >/dev/null; callgrind_control -i off "${VG[$t]}" >/dev/null; done
sleep 1
ok=$(grep -o '"ok":[0-9]*' "$OUT/$LABEL.load.json" | head -1 | cut -d: -f2)
sent=$(grep -o '"sent":[0-9]*' "$OUT/$LABEL.load.json" | head -1 | cut -d: -f2)
echo "bench: $LABEL: $sent requests sent, ${ok:-?} answered 200" >&2
for t in ${TARGETS//,/ }; do
  f=$(ls -t "$OUT/callgrind.$LABEL.$t"* | head -1)
  callgrind_annotate --inclusive=no "$f" >"$OUT/$LABEL.$t.self.txt" 2>/dev/null || true
  callgrind_annotate --inclusive=yes "$f" >"$OUT/$LABEL.$t.inclusive.txt" 2>/dev/null || true
  total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$OUT/$LABEL.$t.self.txt")
  per=$(awk -v t="$total" -v n="${ok:-$REQUESTS}" 'BEGIN { if (n > 0) printf "%.0f", t / n; else print "?" }')
  [ -n "${BENCH_KEEP_RAW:-}" ] || rm -f "$f"  # large; the annotations stay (BENCH_KEEP_RAW=1 keeps it)
  echo "{\"label\":\"$LABEL\",\"target\":\"$t\",\"requests\":${ok:-0},\"instructions\":$total,\"per_request\":$per}" | tee -a "$OUT/callgrind.jsonl"
done
echo "bench: files in $OUT" >&2
