#!/usr/bin/env bash
# The throwaway PostgreSQL of the test suite (ctest fixture "pg"):
#   test-pg.sh start DIR | stop DIR
# Socket only (no TCP port to collide with), fsync off: it is thrown away.
set -euo pipefail
. "$(dirname "$0")/lib/pg.sh"
cmd=$1 dir=$2
case $cmd in
  start)
    pg_stop "$dir"
    rm -rf "$dir"
    PG_INIT_EXTRA=--no-sync pg_init "$dir"
    pg_start "$dir" 5432 "''" -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
      -c max_connections=300
    echo "throwaway PostgreSQL at $dir/sock"
    ;;
  stop)
    pg_stop "$dir"
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
