#!/bin/sh
# PostgreSQL in the foreground. On first start (no PGDATA/PG_VERSION) it creates the
# cluster: superuser POSTGRES_USER with password POSTGRES_PASSWORD (required), database
# POSTGRES_DB, password (scram-sha-256) authentication over TCP from anywhere, trust on
# the container's own Unix socket. PGPORT (default 5432) is the port and
# POSTGRES_LISTEN_ADDRESSES (default '*') the addresses; extra arguments go to postgres.
#
# SIGTERM (docker stop) makes a fast shutdown: PostgreSQL's own reaction to SIGTERM, the
# smart shutdown, would wait for every client to disconnect, and feeders never do.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PGPORT:=5432}"
: "${POSTGRES_USER:=feedwork}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_LISTEN_ADDRESSES:=*}"
export PGDATA PGPORT

log() { echo "postgres-entrypoint: $*" >&2; }

initialize() {
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        log "POSTGRES_PASSWORD must be set to create the cluster"
        exit 2
    fi
    if [ ! -w "$PGDATA" ]; then
        log "$PGDATA is not writable by $(id -un) (uid $(id -u))"
        exit 1
    fi
    log "creating the cluster in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 \
        >/dev/null
    rm -f "$pwfile"
    # initdb lets TCP clients in from loopback only; feeders in other containers come
    # from anywhere.
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Socket only, so that no client connects before the database exists.
        pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --timeout=60 \
            --silent start
        echo 'CREATE DATABASE :"db";' | psql --quiet --no-psqlrc -v ON_ERROR_STOP=1 \
            --username="$POSTGRES_USER" --dbname=postgres -v db="$POSTGRES_DB"
        pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    fi
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialize
fi

postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses="$POSTGRES_LISTEN_ADDRESSES" "$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null' TERM INT
set +e
wait "$pid"
status=$?
# A trapped signal ends `wait` early; wait again until the server has really exited.
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid"
    status=$?
done
exit "$status"
