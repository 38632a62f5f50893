#!/bin/bash
# Runs once, on the first start of the postgres container (empty data volume), as the postgres
# superuser (the official image's /docker-entrypoint-initdb.d hook).
#
# One role and one database per service: tollgate_auth, tollgate_quota, tollgate_router,
# tollgate_billing. No service can read another's tables (DESIGN.md: "No service reads another's
# tables"). Each role's password is taken from the DSN secret the service itself uses
# (/run/secrets/<svc>_dsn, written by deploy/compose/make-secrets.sh), so there is one source.
set -euo pipefail
secrets=${INITDB_SECRETS_DIR:-/run/secrets}

for svc in auth quota router billing; do
  dsn_file="$secrets/${svc}_dsn"
  if [[ ! -r "$dsn_file" ]]; then
    echo "initdb: $dsn_file is missing; run deploy/compose/make-secrets.sh first" >&2
    exit 1
  fi
  password=$(sed -n 's/.*password=\([^ ]*\).*/\1/p' "$dsn_file")
  if [[ -z "$password" ]]; then
    echo "initdb: no password=... in $dsn_file" >&2
    exit 1
  fi
  role="tollgate_${svc}"
  echo "initdb: creating role and database $role"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
done
