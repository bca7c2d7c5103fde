#!/usr/bin/env bash
# Starts the local services the tests use, when they are installed but not running.
# Safe to run again: a running service is left alone. A missing tool is not an error
# (the tests that need the service skip), only a warning.
set -uo pipefail

ensure_postgres() {
    if ! command -v pg_isready >/dev/null 2>&1; then
        echo "ensure-services: pg_isready not found; PostgreSQL tests will skip" >&2
        return 0
    fi
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        return 0
    fi
    local version=""
    if [ -d /etc/postgresql ]; then
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
    fi
    if [ -z "$version" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "ensure-services: PostgreSQL is down and no cluster to start" >&2
        return 0
    fi
    echo "ensure-services: starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 1
    done
    echo "ensure-services: PostgreSQL did not come up; its tests will skip" >&2
}

ensure_postgres
exit 0
