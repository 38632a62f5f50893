#!/usr/bin/env bash
# Seeds a launcher-started suite, once: a demo user with an API key (auth; the key is
# kept in $TG_STATE_DIR/secrets/demo_api_key, mode 600, for the banner), its prepaid
# billing account and the models' prices, and the router with an upstream: the mock
# upstream, or OpenAI when OPENAI_API_KEY is set.
# Idempotent: a second run changes nothing. Called by scripts/run.sh; needs TG_STATE_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${TG_STATE_DIR:?}
BUILD=${BUILD_DIR:-$ROOT/build}
CTL_BIN=("$BUILD/cmd/tollgate/tollgatectl" --admin-token-file="$STATE/secrets/admin_token")
AUTH=("${CTL_BIN[@]}" --addr="127.0.0.1:${TG_GRPC_BASE:-7101}")
CTL=("${CTL_BIN[@]}" --addr="127.0.0.1:$(( ${TG_GRPC_BASE:-7101} + 2 ))")

# The demo key: created once; created again only if the stored one is gone from auth (a new
# database behind an old state directory).
key_file=$STATE/secrets/demo_api_key
uid=$("${AUTH[@]}" auth list-users | awk 'NR>1 && $2=="demo" {print $1}')
[ -n "$uid" ] || uid=$("${AUTH[@]}" auth create-user --name=demo | awk '$1=="user.id" {print $2}')
[ -n "$uid" ] || { echo "tollgate: could not create the demo user" >&2; exit 1; }
if [ ! -s "$key_file" ] || ! "${AUTH[@]}" auth list-api-keys --user-id="$uid" \
    | grep -F -- "$(head -c 10 "$key_file")..." | grep -qw active; then
  # The key goes straight from tollgatectl's answer into a file only we can read.
  (umask 077
   "${AUTH[@]}" auth create-api-key --user-id="$uid" --name=demo \
     | awk '$1=="api_key" {print $2}' >"$key_file.new")
  [ -s "$key_file.new" ] || { rm -f "$key_file.new"; echo "tollgate: could not create the demo API key" >&2; exit 1; }
  mv "$key_file.new" "$key_file"
  chmod 600 "$key_file"
  echo "tollgate: created the demo user's API key (kept in $key_file)"
fi

# Billing, once: the demo user's prepaid account (TG_DEMO_BALANCE_MICROS, default 10 USD) and
# prices for the seeded models (micro-units per 1M tokens: input, output, cached input).
BILLING=("${CTL_BIN[@]}" --addr="127.0.0.1:$(( ${TG_GRPC_BASE:-7101} + 3 ))")
if ! "${BILLING[@]}" billing get-balance --user-id="$uid" >/dev/null 2>&1; then
  "${BILLING[@]}" billing create-account --user-id="$uid" >/dev/null
  "${BILLING[@]}" billing top-up --user-id="$uid" --amount-micros="${TG_DEMO_BALANCE_MICROS:-10000000}" \
    --note="demo balance (scripts/seed.sh)" >/dev/null
  echo "tollgate: the demo user has a prepaid account"
fi
while read -r model in out cached; do
  if ! "${BILLING[@]}" billing list-prices --model="$model" | awk 'NR>1' | grep -q .; then
    "${BILLING[@]}" billing set-price --model="$model" --input-micros-per-mtok="$in" \
      --output-micros-per-mtok="$out" --cached-input-micros-per-mtok="$cached" >/dev/null
  fi
done <<'PRICES'
gpt-4o-mini 150000 600000 75000
gpt-4o 2500000 10000000 1250000
gpt-4.1-mini 400000 1600000 100000
text-embedding-3-small 20000 0 20000
mock-model 1000000 2000000 500000
PRICES

if [ -n "${OPENAI_API_KEY:-}" ]; then
  name=openai base_url=${OPENAI_BASE_URL:-https://api.openai.com/v1}
  models=(gpt-4o-mini gpt-4o gpt-4.1-mini text-embedding-3-small)
else
  name=mock base_url="http://127.0.0.1:$(cat "$STATE/mock.port")/v1"
  models=(gpt-4o-mini gpt-4o text-embedding-3-small mock-model)
fi

if "${CTL[@]}" router list-providers | awk 'NR>1 {print $2}' | grep -qx "$name"; then
  # The mock's port changes with every start: keep the provider pointing at it.
  id=$("${CTL[@]}" router list-providers | awk -v n="$name" 'NR>1 && $2==n {print $1}')
  "${CTL[@]}" router update-provider --id="$id" --base-url="$base_url" >/dev/null
  exit 0
fi
type=openai; [ "$name" = mock ] && type=openai-compatible
id=$("${CTL[@]}" router create-provider --name="$name" --type="$type" --base-url="$base_url" \
  | awk '$1=="provider.id" {print $2}')
if [ -n "${OPENAI_API_KEY:-}" ]; then
  "${CTL[@]}" router create-upstream-key --provider-id="$id" --name=openai-1 --secret-env=OPENAI_API_KEY >/dev/null
else
  "${CTL[@]}" router create-upstream-key --provider-id="$id" --name=mock-a --secret=mock-key-a --weight=1 >/dev/null
  "${CTL[@]}" router create-upstream-key --provider-id="$id" --name=mock-b --secret=mock-key-b --weight=1 >/dev/null
fi
for m in "${models[@]}"; do
  # OpenAI's published output limits; a larger max_tokens is a 400 at the edge.
  limit=0
  case $m in gpt-4o-mini | gpt-4o) limit=16384 ;; gpt-4.1-mini) limit=32768 ;; esac
  "${CTL[@]}" router create-model --name="$m" --owned-by="$name" --max-output-tokens="$limit" >/dev/null
  "${CTL[@]}" router set-model-route --model="$m" --provider-id="$id" >/dev/null
done
echo "tollgate: router seeded with the $name upstream (${models[*]})"
