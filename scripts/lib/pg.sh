# PostgreSQL helpers shared by the launcher and the test harness. initdb refuses
# to run as root, so as root the cluster belongs to the "postgres" user.
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_init DIR: creates DIR/data (once) and DIR/sock.
pg_init() {
  local dir=$1
  mkdir -p "$dir/sock"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir" "$dir/sock"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    [ "$(id -u)" = 0 ] && mkdir -p "$dir/data" && chown postgres: "$dir/data"
    pg_as_owner "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale \
      ${PG_INIT_EXTRA:-} >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  fi
}

# pg_start DIR PORT LISTEN [extra postgres -c options...]
pg_start() {
  local dir=$1 port=$2 listen=$3; shift 3
  local opts="-p $port -k $dir/sock -c listen_addresses=$listen $*"
  [ "$(id -u)" = 0 ] && touch "$dir/postgres.log" && chown postgres: "$dir/postgres.log"
  pg_as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o "$opts" start \
    >/dev/null || { tail -n 20 "$dir/postgres.log" >&2; return 1; }
}

pg_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  pg_as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

pg_running() {
  [ -f "$1/data/postmaster.pid" ] && pg_as_owner "$PGBIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1
}
