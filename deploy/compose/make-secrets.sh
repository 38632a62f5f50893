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
#   tls_ca.crt          the CA of every gRPC certificate -> TOLLGATE_GRPC__TLS__CA_FILE
#   tls_ca.key          its key: issues more certificates; never mounted into a container
#   tls_<c>.crt, .key   c in auth quota router billing edge admin: one certificate per component
#                       (TOLLGATE_GRPC__TLS__CERT_FILE / KEY_FILE). The edge's and the admin's
#                       name their identity (URI SAN tollgate://edge, tollgate://admin); the
#                       services' carry their compose DNS name, localhost and 127.0.0.1.
# Certificates are kept like the rest. TG_RENEW_TLS=1 re-issues every leaf certificate from the
# same CA, each file replaced in one rename (key first): the running containers pick them up
# within grpc.tls.refresh_interval, no restart. Delete tls_* (all) for a new CA (see
# docs/architecture.md "Trust", "Rotating", for doing that without failed handshakes).
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

# Mutual TLS between the containers (on by default in docker-compose.yml): a CA and one
# certificate per component, EC P-256, made with openssl.
command -v openssl >/dev/null || { echo "make-secrets.sh: openssl is needed for the TLS certificates" >&2; exit 1; }
tls_days=825
if [[ ! -s "$dir/tls_ca.crt" || ! -s "$dir/tls_ca.key" ]]; then
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/tls_ca.key" -out "$dir/tls_ca.crt" -days 3650 -subj /CN=tollgate-compose-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null)
  chmod 600 "$dir/tls_ca.key"
  chmod 644 "$dir/tls_ca.crt"
  rm -f "$dir"/tls_{auth,quota,router,billing,edge,admin}.{crt,key}  # signed by another CA
  echo "created $dir/tls_ca.crt"
fi
issue() {  # issue NAME SAN: a leaf certificate for client and server auth, signed by the CA
  local name=$1 san=$2 ext
  if [[ -s "$dir/tls_$name.crt" && -s "$dir/tls_$name.key" && -z "${TG_RENEW_TLS:-}" ]]; then
    echo "kept    $dir/tls_$name.crt"
    return
  fi
  ext=$(mktemp)
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' "$san" >"$ext"
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/.tls_$name.key.new" -subj "/CN=tollgate-$name" 2>/dev/null |
    openssl x509 -req -CA "$dir/tls_ca.crt" -CAkey "$dir/tls_ca.key" -CAcreateserial \
      -CAserial "$dir/tls_ca.srl" -days "$tls_days" -extfile "$ext" -out "$dir/.tls_$name.crt.new" 2>/dev/null)
  rm -f "$ext"
  # uid 10001 reads them; the directory is 0700
  chmod 644 "$dir/.tls_$name.key.new" "$dir/.tls_$name.crt.new"
  mv -f "$dir/.tls_$name.key.new" "$dir/tls_$name.key"
  mv -f "$dir/.tls_$name.crt.new" "$dir/tls_$name.crt"
  echo "created $dir/tls_$name.crt"
}
for svc in auth quota router billing; do
  issue "$svc" "DNS:$svc,DNS:localhost,IP:127.0.0.1"
done
issue edge "URI:tollgate://edge"
issue admin "URI:tollgate://admin"
