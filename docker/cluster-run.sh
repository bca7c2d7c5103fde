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
# --tls (`make docker-cluster-tls`): the same with TLS and API keys, as docs/SECURITY.md
# has users run it. `feedwork dev-certs --keys` writes a CA, the feeder certificate and
# the keys into the run's directory; compose reads docker-compose.tls.yml and
# docker/compose.host.tls.yml as well. Tasks are submitted with the producer key and
# counted with the admin key, over TLS, from the host; before that the run checks that a
# producer key may not read stats (PERMISSION_DENIED), a call without a key is
# UNAUTHENTICATED and a plaintext client, even with the admin key, cannot connect.
#
# Usage: docker/cluster-run.sh [--tls] [--tasks N] [--workers N] [--kill SERVICE|--no-kill]
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
TLS=0
SLEEP_MS=20
PROJECT=feedwork-cluster
FEEDWORK=${FEEDWORK:-.venv/bin/feedwork}
FEEDWORK_PYTHON=${FEEDWORK_PYTHON:-.venv/bin/python} # with feedwork importable
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
        --tls) TLS=1 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2 && exit 2 ;;
    esac
    shift
done

# The client's own variables, should the caller's shell have any: the run chooses what
# each of its calls carries (as_role, below).
unset FEEDWORK_TLS FEEDWORK_TLS_CA FEEDWORK_TLS_CLIENT_CERT FEEDWORK_TLS_CLIENT_KEY \
    FEEDWORK_TLS_SERVER_NAME FEEDWORK_API_KEY FEEDWORK_API_KEY_FILE

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

COMPOSE_FILES=(-f docker-compose.yml -f docker/compose.host.yml)
if [ "$TLS" -eq 1 ]; then
    # After the TLS file and the host file, the last one gives the feeders both: their
    # commands are each file's own, and the last file's wins (docker/compose.host.tls.yml).
    COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.tls.yml
        -f docker/compose.host.yml -f docker/compose.host.tls.yml)
    # What tls-certs copies to the containers; made below, deleted with the run.
    export FEEDWORK_CERTS_DIR=$RUN_DIR/certs
fi
SECURED=$([ "$TLS" -eq 0 ] || echo " (TLS, API keys)")
compose() {
    timeout 300 docker-compose --project-name "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
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
    # The keys are of this run's cluster only, which is gone; kept logs need none.
    rm -rf "$RUN_DIR/certs"
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

if [ "$TLS" -eq 1 ]; then
    # As `make dev-certs` does: the feeder certificate names localhost, 127.0.0.1 and ::1
    # (the healthchecks and the host's clients) and the service names (the workers).
    "$FEEDWORK" dev-certs --out "$FEEDWORK_CERTS_DIR" --keys \
        --host feeder --host feeder-1 --host feeder-2 --host feeder-3 >/dev/null ||
        fail "tls: feedwork dev-certs"
    note "tls: CA, feeder certificate, worker/producer/admin keys and auth.txt from feedwork dev-certs (deleted after the run)"
fi

# --- 4: images ------------------------------------------------------------------------

phase=$(date +%s)
docker/build-images.sh 2>&1 | tee "$RUN_DIR/build.log" >&2
note "images: built in $(seconds_since "$phase") s: $(grep -E 'build-images: feedwork[^ ]* [0-9.]+[kMG]B$' "$RUN_DIR/build.log" | cut -d' ' -f2- | paste -sd, | sed 's/,/, /g')"

# --- helpers for the runs -------------------------------------------------------------

# Waits until every service of the running project reports healthy.
# tls-certs, which copies the certificates and exits, is done once it exited with 0.
HEALTH_FORMAT='{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else if eq .State.Status "running"}}healthy{{else if and (eq .State.Status "exited") (eq .State.ExitCode 0) (eq (index .Config.Labels "com.docker.compose.service") "tls-certs")}}done{{else}}{{.State.Status}}{{end}}'
wait_healthy() {
    local timeout=$1 deadline ids=() unhealthy
    deadline=$(($(date +%s) + timeout))
    while :; do
        mapfile -t ids < <(compose --profile cluster ps -q)
        # A running container without a healthcheck (the embedded workers) counts.
        unhealthy=$([ ${#ids[@]} -eq 0 ] || "$DOCKER" inspect -f "$HEALTH_FORMAT" "${ids[@]}" |
            grep -vE ' (healthy|done)$' || true)
        [ ${#ids[@]} -gt 0 ] && [ -z "$unhealthy" ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "not healthy after $timeout s: $unhealthy"
            compose --profile cluster logs --tail 20 >&2
            return 1
        fi
        sleep 1
    done
}

# Runs a feedwork command as ROLE: with --tls, over TLS with ROLE's key ("none": no
# key); without, as it is.
as_role() {
    local role=$1
    shift
    if [ "$TLS" -eq 0 ]; then
        "$@"
        return
    fi
    # One name for every feeder: gRPC checks a target of several against the whole list.
    local -a environment=(FEEDWORK_TLS_CA="$FEEDWORK_CERTS_DIR/ca.pem" FEEDWORK_TLS_SERVER_NAME=feeder)
    [ "$role" = none ] || environment+=(FEEDWORK_API_KEY_FILE="$FEEDWORK_CERTS_DIR/$role.key")
    env "${environment[@]}" "$@"
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
    as_role producer timeout 120 "$FEEDWORK" submit --target "$target" --retry-for 30 \
        --file "$RUN_DIR/tasks.jsonl" >"$RUN_DIR/task-ids" 2>>"$RUN_DIR/submit.log"
}

# "submitted completed ready scheduled leased dead cancelled expired redelivered
# duplicate_acks adopted" for queue demo, from `feedwork stats --json`.
demo_counts() {
    as_role admin timeout 30 "$FEEDWORK" stats --target "$1" --queue demo --json --retry-for 10 |
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
    note "embedded: feeder (SQLite) and $(compose ps -q worker | wc -l) workers up and healthy in $(seconds_since "$phase") s$SECURED"
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

# Runs a feedwork command that must be refused with gRPC status CODE; prints how.
refused() {
    local code=$1 output
    shift
    if output=$("$@" 2>&1); then
        fail "tls: succeeded, but should be $code: ${*: -6}"
    fi
    grep -q "error: $code:" <<<"$output" || fail "tls: want $code: $output"
    sed -n "s/^.*error: \($code:.*\)$/\1/p" <<<"$output" | head -n 1 | cut -c1-100
}

# With TLS and keys: what each caller the feeders must turn away is told.
check_access() {
    local said
    said=$(refused PERMISSION_DENIED as_role producer timeout 30 "$FEEDWORK" stats \
        --target "$CLUSTER_TARGET" --retry-for 0)
    note "tls: the producer key on GetStats: $said"
    said=$(refused UNAUTHENTICATED as_role none timeout 30 "$FEEDWORK" submit \
        --target "$CLUSTER_TARGET" --retry-for 0 -q demo '{"sleep_ms": 0}')
    note "tls: Submit over TLS without a key: $said"
    # Plaintext with the admin key (the client sends it on loopback without TLS): the
    # feeders answer TLS only, so the connection fails before any call is made.
    local feeder
    for feeder in ${CLUSTER_TARGET//,/ }; do
        said=$(refused UNAVAILABLE env FEEDWORK_API_KEY_FILE="$FEEDWORK_CERTS_DIR/admin.key" \
            timeout 30 "$FEEDWORK" stats --target "$feeder" --retry-for 0 --timeout 5)
    done
    note "tls: a plaintext client with the admin key, at each of the 3 feeders: $said"
}

# Reads every submitted task back (GetTask, with the admin key): "N COMPLETED of N; A
# attempts, leased by CALLERS", the callers being the access list's names of the keys
# the feeders authenticated for each lease.
read_back() {
    as_role admin timeout 120 "$FEEDWORK_PYTHON" - "$1" "$RUN_DIR/task-ids" <<'PYTHON'
import sys
from concurrent.futures import ThreadPoolExecutor

from feedwork.client import FeederClient
from feedwork.types import TaskState

target, ids_file = sys.argv[1:]
with open(ids_file) as ids, FeederClient(target) as client, ThreadPoolExecutor(8) as pool:
    tasks = list(pool.map(client.get, [line.strip() for line in ids if line.strip()]))
completed = sum(task.state == TaskState.COMPLETED for task in tasks)
attempts = [attempt for task in tasks for attempt in task.history]
callers = ", ".join(sorted({attempt.caller or "(none)" for attempt in attempts}))
print(f"{completed} COMPLETED of {len(tasks)}; {len(attempts)} attempts, leased by {callers}")
PYTHON
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
    note "cluster: postgres, 3 feeders and $WORKERS workers up and healthy in $(seconds_since "$phase") s$SECURED"
    check_postgres
    if [ "$TLS" -eq 1 ]; then check_access; fi
    phase=$(date +%s)
    submit "$CLUSTER_TARGET" "$TASKS" || fail "cluster: submit"
    log "submitted $TASKS tasks in $(seconds_since "$phase") s"
    wait_completed "$CLUSTER_TARGET" "$TASKS" 600 kill_midway
    local took
    took=$(seconds_since "$phase")
    note "cluster: $TASKS tasks in $took s ($((TASKS / (took > 0 ? took : 1))) tasks/s, ${SLEEP_MS} ms each, $WORKERS workers)${KILLED:+, SIGKILLed $KILLED}; $LEDGER"
    if [ "$TLS" -eq 1 ]; then
        local tasks
        tasks=$(read_back "$CLUSTER_TARGET") || fail "tls: reading the tasks back"
        [[ "$tasks" == "$TASKS COMPLETED of $TASKS; "*", leased by worker" ]] ||
            fail "tls: tasks read back: $tasks"
        note "tls: every task read back with the admin key: $tasks"
    fi
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
