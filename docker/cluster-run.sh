#!/usr/bin/env bash
# feedwork's compose file on a real Docker engine, on this machine, leaving nothing
# behind (`make docker-cluster`; docs/DOCKER.md has the timings):
#
#  1. records what the host has: interfaces, firewall rules, forwarding, mounts, cgroups,
#     Docker's files and processes, listeners on the ports used (docker/host-state.sh);
#  2. installs docker.io, docker-compose and debootstrap if missing (Debian's; no
#     service started);
#  3. starts a private dockerd without bridge, iptables or forwarding, unless an engine
#     is already running (docker/dockerd.sh);
#  4. builds the images without a registry (docker/build-images.sh);
#  5. embedded: the default services (a feeder on SQLite, four workers) with host
#     networking, --embedded-tasks tasks through them;
#  6. cluster: PostgreSQL (checked from the host with pg_isready and psql), three
#     feeders, --workers workers; --tasks tasks submitted from the host, one feeder
#     SIGKILLed mid-run (--kill), and every task must complete exactly once;
#  7. always, failed or not: `docker-compose down -v`, stops the dockerd it started, and
#     compares the host with step 1: any difference is printed and fails the run.
#
# Usage: docker/cluster-run.sh [--tasks N] [--workers N] [--kill SERVICE|--no-kill]
#                              [--embedded-tasks N] [--no-embedded] [--purge]
# --purge also deletes the private engine's images and build cache (kept by default in
# $FEEDWORK_DOCKER_ROOT, /var/lib/feedwork-docker, so that the next run takes seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
TASKS=2000
WORKERS=8
KILL=feeder-2
EMBEDDED_TASKS=500
PURGE=0
SLEEP_MS=20
PROJECT=feedwork-cluster
FEEDWORK=${FEEDWORK:-.venv/bin/feedwork}
DOCKER=/usr/bin/docker
DATA_ROOT=${FEEDWORK_DOCKER_ROOT:-/var/lib/feedwork-docker}
export DOCKER

while [ $# -gt 0 ]; do
    case "$1" in
        --tasks) TASKS=$2 && shift ;;
        --workers) WORKERS=$2 && shift ;;
        --kill) KILL=$2 && shift ;;
        --no-kill) KILL= ;;
        --embedded-tasks) EMBEDDED_TASKS=$2 && shift ;;
        --no-embedded) EMBEDDED_TASKS=0 ;;
        --purge) PURGE=1 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2 && exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "cluster-run: needs root (apt-get, dockerd, iptables-save)" >&2
    exit 2
fi
RUN_DIR=$(mktemp -d /tmp/feedwork-cluster.XXXXXX)
STARTED=$(date +%s)
SUMMARY=()
log() { echo "cluster-run: $*" >&2; }
note() { SUMMARY+=("$*") && log "$*"; }
seconds_since() { echo $(($(date +%s) - $1)); }
fail() { log "FAILED: $*" && exit 1; }

# --- ports: the defaults when free, else free ones (the compose file reads them) -------

free_port() { ! ss -Hltn "sport = :$1" | grep -q .; }
any_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pick_port() {
    local variable=$1 port=$2
    free_port "$port" || port=$(any_free_port)
    export "$variable=$port"
}
pick_port FEEDWORK_FEEDER_PORT 50051
pick_port FEEDWORK_FEEDER_1_PORT 50061
pick_port FEEDWORK_FEEDER_2_PORT 50062
pick_port FEEDWORK_FEEDER_3_PORT 50063
pick_port FEEDWORK_POSTGRES_PORT 55432
PORTS=("$FEEDWORK_FEEDER_PORT" "$FEEDWORK_FEEDER_1_PORT" "$FEEDWORK_FEEDER_2_PORT"
    "$FEEDWORK_FEEDER_3_PORT" "$FEEDWORK_POSTGRES_PORT")
export FEEDWORK_BASE_IMAGE=feedwork/python:3.11-bookworm
export FEEDWORK_POSTGRES_IMAGE=feedwork/postgres:15-bookworm
CLUSTER_TARGET=127.0.0.1:$FEEDWORK_FEEDER_1_PORT,127.0.0.1:$FEEDWORK_FEEDER_2_PORT,127.0.0.1:$FEEDWORK_FEEDER_3_PORT

compose() {
    timeout 300 docker-compose --project-name "$PROJECT" \
        -f docker-compose.yml -f docker/compose.host.yml "$@"
}

# --- 1-3: snapshot, packages, engine --------------------------------------------------

docker/host-state.sh snapshot "$RUN_DIR/before" "${PORTS[@]}"

install_packages() {
    local missing=() package
    for package in docker.io docker-compose debootstrap; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$package")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        note "docker.io, docker-compose and debootstrap were installed already"
        return 0
    fi
    log "installing ${missing[*]} (apt-get, no recommends)"
    # A package must not start its service here (docker.io would start dockerd with a
    # bridge and iptables rules): a policy-rc.d refusing every start, for the install.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >"$RUN_DIR/apt.log" 2>&1 || {
        timeout 300 apt-get update -qq >>"$RUN_DIR/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >>"$RUN_DIR/apt.log" 2>&1 || status=$?
    }
    [ $own_policy -eq 0 ] || rm -f "$policy"
    [ $status -eq 0 ] || { tail -n 20 "$RUN_DIR/apt.log" >&2 && fail "apt-get install"; }
    note "installed ${missing[*]} (they stay installed; the engine is stopped again)"
}

cleanup() {
    local status=$? clean=0
    trap - EXIT INT TERM
    set +e
    if [ -n "${DOCKER_HOST:-}" ]; then
        log "cleaning up: docker-compose down -v"
        compose --profile cluster down -v --remove-orphans --timeout 20 \
            >>"$RUN_DIR/compose.log" 2>&1 || log "docker-compose down failed (see the diff below)"
    fi
    local engine_ours=0
    [ ! -e "$RUN_DIR/started" ] || engine_ours=1
    docker/dockerd.sh stop "$RUN_DIR"
    if [ "$PURGE" -eq 1 ] && [ $engine_ours -eq 1 ]; then
        log "--purge: deleting $DATA_ROOT (images, build cache)"
        rm -rf --one-file-system "${DATA_ROOT:?}"
        note "purged the engine's images and build cache ($DATA_ROOT)"
    elif [ $engine_ours -eq 1 ]; then
        note "kept the engine's images and build cache: $(du -sh "$DATA_ROOT" | cut -f1) in $DATA_ROOT (--purge deletes them)"
    fi
    docker/host-state.sh snapshot "$RUN_DIR/after" "${PORTS[@]}"
    log "the host now against before the run:"
    if docker/host-state.sh diff "$RUN_DIR/baseline" "$RUN_DIR/after" >"$RUN_DIR/host.diff"; then
        note "host: no interface, firewall rule, sysctl, mount, cgroup, Docker file or process left"
        clean=1
    else
        cat "$RUN_DIR/host.diff" >&2
        log "FAILED: the run left the differences above"
    fi
    log "summary (total $(seconds_since "$STARTED") s):"
    printf '  %s\n' "${SUMMARY[@]}" >&2
    if [ $status -eq 0 ] && [ $clean -eq 1 ]; then
        rm -rf "$RUN_DIR"
        exit 0
    fi
    log "logs kept in $RUN_DIR"
    exit $((status == 0 ? 1 : status))
}

install_packages
# Firewall rules and Docker's files are compared with their state after the install
# (iptables-save comes with docker.io: an empty ruleset reads differently from "not
# installed"); everything else with the state before it, so that a daemon the install
# might have started counts as left behind.
docker/host-state.sh snapshot "$RUN_DIR/installed" "${PORTS[@]}"
cp -r "$RUN_DIR/before" "$RUN_DIR/baseline"
cp "$RUN_DIR/installed/firewall" "$RUN_DIR/installed/files" "$RUN_DIR/baseline/"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DOCKER_HOST=$(docker/dockerd.sh start "$RUN_DIR")
export DOCKER_HOST
if [ -e "$RUN_DIR/started" ]; then
    note "engine: started dockerd $(/usr/sbin/dockerd --version | cut -d, -f1 | cut -d' ' -f3) (bridge none, iptables off), log $RUN_DIR/dockerd.log"
else
    note "engine: used the one running at $DOCKER_HOST"
fi
# Left over from an interrupted run, if any.
compose --profile cluster down -v --remove-orphans >>"$RUN_DIR/compose.log" 2>&1

# --- 4: images ------------------------------------------------------------------------

phase=$(date +%s)
docker/build-images.sh 2>&1 | tee "$RUN_DIR/build.log" >&2
note "images: built in $(seconds_since "$phase") s: $(grep -E 'build-images: feedwork[^ ]* [0-9.]+[kMG]B$' "$RUN_DIR/build.log" | cut -d' ' -f2- | paste -sd, | sed 's/,/, /g')"

# --- helpers for the runs -------------------------------------------------------------

# Waits until every service of the running project reports healthy.
HEALTH_FORMAT='{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else if eq .State.Status "running"}}healthy{{else}}{{.State.Status}}{{end}}'
wait_healthy() {
    local timeout=$1 deadline ids=() unhealthy
    deadline=$(($(date +%s) + timeout))
    while :; do
        mapfile -t ids < <(compose --profile cluster ps -q)
        # A running container without a healthcheck (the embedded workers) counts.
        unhealthy=$([ ${#ids[@]} -eq 0 ] || "$DOCKER" inspect -f "$HEALTH_FORMAT" "${ids[@]}" |
            grep -v ' healthy$' || true)
        [ ${#ids[@]} -gt 0 ] && [ -z "$unhealthy" ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "not healthy after $timeout s: $unhealthy"
            compose --profile cluster logs --tail 20 >&2
            return 1
        fi
        sleep 1
    done
}

submit() {
    local target=$1 count=$2
    # Leases of 5 s (workers extend them while a task runs): a task whose lease dies
    # with a killed feeder, leased but never delivered, comes back in 5 s, not 30.
    python3 -c 'import json, sys
for _ in range(int(sys.argv[1])):
    print(json.dumps({"queue": "demo", "payload": {"sleep_ms": int(sys.argv[2])},
                      "lease_duration": 5}))' \
        "$count" "$SLEEP_MS" >"$RUN_DIR/tasks.jsonl"
    timeout 120 "$FEEDWORK" submit --target "$target" --retry-for 30 \
        --file "$RUN_DIR/tasks.jsonl" >/dev/null 2>>"$RUN_DIR/submit.log"
}

# "submitted completed ready scheduled leased dead cancelled expired redelivered
# duplicate_acks adopted" for queue demo, from `feedwork stats --json`.
demo_counts() {
    timeout 30 "$FEEDWORK" stats --target "$1" --queue demo --json --retry-for 10 |
        python3 -c 'import json, sys
queue = json.load(sys.stdin)["queues"][0]
totals = queue["totals"]
print(totals["submitted"], queue["completed"], queue["ready"], queue["scheduled"],
      queue["leased"], queue["dead"], queue["cancelled"], totals["completed"],
      totals["expired"], totals["redelivered"], totals["duplicate_acks"], totals["adopted"])'
}

# Waits until `expected` tasks are completed; calls `on_progress completed` meanwhile.
# Then checks that each task completed exactly once and none is left or dead.
wait_completed() {
    local target=$1 expected=$2 timeout=$3 on_progress=${4:-true} deadline counts
    local submitted completed ready scheduled leased dead cancelled total_completed
    local expired redelivered duplicates adopted
    deadline=$(($(date +%s) + timeout))
    while :; do
        counts=$(demo_counts "$target") || counts=""
        if [ -n "$counts" ]; then
            read -r submitted completed ready scheduled leased dead cancelled \
                total_completed expired redelivered duplicates adopted <<<"$counts"
            "$on_progress" "$completed"
            if [ "$completed" -ge "$expected" ] || [ "$dead" -gt 0 ]; then
                break
            fi
        fi
        [ "$(date +%s)" -lt "$deadline" ] || fail "not all tasks completed after $timeout s: ${counts:-no stats}"
        sleep 0.5
    done
    LEDGER="submitted $submitted, completed $completed (completions counted $total_completed), dead $dead, left $((ready + scheduled + leased + cancelled)); expired $expired, redelivered $redelivered, duplicate acks $duplicates, adopted $adopted"
    if [ "$submitted" -ne "$expected" ] || [ "$completed" -ne "$expected" ] ||
        [ "$total_completed" -ne "$expected" ] || [ "$dead" -ne 0 ] ||
        [ $((ready + scheduled + leased + cancelled)) -ne 0 ]; then
        fail "ledger: $LEDGER"
    fi
}

# --- 5: embedded ----------------------------------------------------------------------

run_embedded() {
    local phase target=127.0.0.1:$FEEDWORK_FEEDER_PORT
    phase=$(date +%s)
    compose up -d --no-build >>"$RUN_DIR/compose.log" 2>&1 || fail "embedded: up"
    wait_healthy 120 || fail "embedded: health"
    note "embedded: feeder (SQLite) and $(compose ps -q worker | wc -l) workers up and healthy in $(seconds_since "$phase") s"
    phase=$(date +%s)
    submit "$target" "$EMBEDDED_TASKS" || fail "embedded: submit"
    wait_completed "$target" "$EMBEDDED_TASKS" 300
    note "embedded: $EMBEDDED_TASKS tasks in $(seconds_since "$phase") s; $LEDGER"
    phase=$(date +%s)
    compose down -v >>"$RUN_DIR/compose.log" 2>&1 || fail "embedded: down"
    note "embedded: down -v in $(seconds_since "$phase") s"
}

# --- 6: cluster -----------------------------------------------------------------------

check_postgres() {
    if ! command -v psql >/dev/null 2>&1; then
        note "postgres: psql not installed on the host; checked by the healthcheck only"
        return 0
    fi
    pg_isready -q -h 127.0.0.1 -p "$FEEDWORK_POSTGRES_PORT" || fail "postgres: pg_isready"
    local connections
    connections=$(PGPASSWORD=feedwork timeout 20 psql -h 127.0.0.1 -p "$FEEDWORK_POSTGRES_PORT" \
        -U feedwork -d feedwork -Atc \
        "select count(*) from pg_stat_activity where datname = 'feedwork' and pid <> pg_backend_pid()") ||
        fail "postgres: psql"
    note "postgres: 127.0.0.1:$FEEDWORK_POSTGRES_PORT ready (pg_isready), psql from the host as feedwork: $connections connections from the feeders"
}

KILLED=""
kill_midway() {
    local completed=$1
    if [ -n "$KILL" ] && [ -z "$KILLED" ] && [ "$completed" -ge $((TASKS * 3 / 10)) ]; then
        compose --profile cluster kill -s SIGKILL "$KILL" >>"$RUN_DIR/compose.log" 2>&1 ||
            fail "cluster: kill $KILL"
        KILLED="$KILL at $completed of $TASKS completed"
        log "SIGKILLed $KILLED"
    fi
}

run_cluster() {
    local phase usage
    # Read whole before grep: `grep -q` stops at the first match, and the docker client,
    # its pipe closed while still writing, fails the pipeline (pipefail).
    usage=$("$DOCKER" run --rm --network none feedwork:latest python -m feeder --help) ||
        fail "cluster: python -m feeder --help in the image"
    grep -q postgresql:// <<<"$usage" ||
        fail "cluster: this feeder has no PostgreSQL backend (--db postgresql://...)"
    phase=$(date +%s)
    compose --profile cluster up -d --no-build --scale cluster-worker="$WORKERS" \
        cluster-worker >>"$RUN_DIR/compose.log" 2>&1 || fail "cluster: up"
    wait_healthy 180 || fail "cluster: health"
    note "cluster: postgres, 3 feeders and $WORKERS workers up and healthy in $(seconds_since "$phase") s"
    check_postgres
    phase=$(date +%s)
    submit "$CLUSTER_TARGET" "$TASKS" || fail "cluster: submit"
    log "submitted $TASKS tasks in $(seconds_since "$phase") s"
    wait_completed "$CLUSTER_TARGET" "$TASKS" 600 kill_midway
    local took
    took=$(seconds_since "$phase")
    note "cluster: $TASKS tasks in $took s ($((TASKS / (took > 0 ? took : 1))) tasks/s, ${SLEEP_MS} ms each, $WORKERS workers)${KILLED:+, SIGKILLed $KILLED}; $LEDGER"
    if [ -n "$KILLED" ]; then
        local state
        state=$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' \
            "$(compose --profile cluster ps -q "$KILL")")
        note "cluster: $KILL afterwards: $state"
    fi
    phase=$(date +%s)
    compose --profile cluster down -v >>"$RUN_DIR/compose.log" 2>&1 || fail "cluster: down"
    note "cluster: down -v in $(seconds_since "$phase") s"
}

[ "$EMBEDDED_TASKS" -eq 0 ] || run_embedded
run_cluster
