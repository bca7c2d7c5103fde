#!/usr/bin/env bash
# Starts the local services the tests use, when they are installed but not running, and
# installs docker-compose (for `make compose-check`), libfaketime and strace (two fault
# tests), and chromium with chromedriver (the dashboard's browser tests) when they are
# missing and apt-get can.
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

# docker-compose (Debian's, the Python v1) validates the compose files in `make test`
# (`make compose-check`). Installed without recommends: the validation needs no engine.
ensure_docker_compose() {
    if command -v docker-compose >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-services: docker-compose not found (and no root apt-get to install it);" \
            "the compose files go unchecked" >&2
        return 0
    fi
    echo "ensure-services: installing docker-compose (apt-get)" >&2
    local log
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -qq --no-install-recommends docker-compose >"$log" 2>&1; then
        # A fresh machine may have no package lists yet.
        timeout 300 apt-get update -qq >>"$log" 2>&1
        timeout 300 apt-get install -y -qq --no-install-recommends docker-compose >>"$log" 2>&1 ||
            {
                tail -n 5 "$log" >&2
                echo "ensure-services: could not install docker-compose; the compose files go unchecked" >&2
            }
    fi
    rm -f "$log"
}

# A Debian package a fault test needs: installed when `present` fails and apt-get can.
ensure_package() {
    local package=$1 present=$2 why=$3
    if eval "$present" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-services: $package not found (and no root apt-get to install it); $why" >&2
        return 0
    fi
    echo "ensure-services: installing $package (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 ||
        { timeout 300 apt-get update -qq >/dev/null 2>&1 &&
            timeout 300 apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1; } ||
        echo "ensure-services: could not install $package; $why" >&2
}

ensure_postgres
ensure_docker_compose
# tests/faults/test_clock_steps.py steps a feeder's wall clock with libfaketime.
ensure_package faketime 'compgen -G "/usr/lib/*/faketime/libfaketime.so.1"' \
    "the clock-step fault test will fail"
# tests/faults/test_fsync_before_reply.py counts a feeder's fsyncs with strace.
ensure_package strace 'command -v strace' "the fsync-ordering fault test will fail"
# tests/browser/ drives the dashboard in Debian's headless chromium through chromedriver.
ensure_package chromium 'command -v chromium' "the dashboard's browser tests will fail"
ensure_package chromium-driver 'command -v chromedriver' "the dashboard's browser tests will fail"
exit 0
