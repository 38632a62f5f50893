#!/usr/bin/env bash
# Writes the compose stack's secrets, one file each, into deploy/compose/secrets/ (git-ignored),
# or into the directory given as $1 (then run compose with TG_SECRETS_DIR=<that dir>).
# Existing files are kept, so re-running never changes a password the database already has.
#
#   admin_token         every admin RPC             -> TOLLGATE_ADMIN__TOKEN_FILE
#   edge_service_token  the edge's internal identity -> TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_FILE
#   router_master_key   AES-256-GCM key, 64 hex     -> TOLLGATE_ROUTER__MASTER_KEY_FILE
#   postgres_password   the postgres superuser      -> POSTGRES_PASSWORD_FILE
#   <svc>_dsn           libpq DSN with the password -> TOLLGATE_<SVC>__DATABASE__DSN_FILE
set -euo pipefail
dir=${1:-$(cd "$(dirname "$0")" && pwd)/secrets}
mkdir -p "$dir"
chmod 700 "$dir"

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

put() {  # put NAME VALUE: write once; readable by the containers' users (uid 10001, postgres)
  local file="$dir/$1"
  if [[ -s "$file" ]]; then
    echo "kept    $file"
    return
  fi
  umask 022
  printf '%s\n' "$2" >"$file"
  chmod 644 "$file"   # the directory is 0700: only the bind mounts expose these files
  echo "created $file"
}

put admin_token "$(random_hex 24)"
put edge_service_token "$(random_hex 32)"
put router_master_key "$(random_hex 32)"
put postgres_password "$(random_hex 16)"
for svc in auth quota router billing; do
  put "${svc}_dsn" "host=postgres port=5432 dbname=tollgate_${svc} user=tollgate_${svc} password=$(random_hex 16) connect_timeout=5"
done
