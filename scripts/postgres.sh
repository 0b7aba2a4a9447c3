#!/usr/bin/env bash
# Starts a throwaway PostgreSQL (Debian's `postgresql`) for the tests and prints its URL;
# `scripts/postgres.sh stop DIR` stops it.   url=$(scripts/postgres.sh start "$dir")
set -euo pipefail
cmd=${1:?start or stop}
dir=${2:?a directory for the cluster}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
  start)
    mkdir -p "$dir"
    # The server runs as `postgres`: it must reach the directory.
    [ "$(id -u)" = 0 ] && { chmod a+x "$(dirname "$dir")"; chown postgres "$dir"; }
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U sekisho >/dev/null
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    echo "postgres://sekisho@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
    ;;
esac
