#!/usr/bin/env bash
# A private Docker engine for one run: started in the background with no bridge, no
# iptables rules and no IP forwarding (containers use host networking), its own socket,
# state and log, and stopped again afterwards. A Docker engine that is already running
# is never started or stopped by this script.
#
#   docker/dockerd.sh start RUN_DIR   print the DOCKER_HOST to use; "started" is
#                                     recorded in RUN_DIR when this script started it
#   docker/dockerd.sh stop RUN_DIR    stop the engine that `start` started, if any
#
# Environment: FEEDWORK_DOCKER_ROOT (images and build cache; default
# /var/lib/feedwork-docker, kept between runs), FEEDWORK_DOCKER_STORAGE (storage driver;
# default: the engine's choice, overlay2 where the filesystem allows it).
set -euo pipefail

DATA_ROOT=${FEEDWORK_DOCKER_ROOT:-/var/lib/feedwork-docker}
EXEC_ROOT=/run/feedwork-docker
SOCKET=$EXEC_ROOT/docker.sock
CGROUP_PARENT=feedwork-docker
DOCKER=/usr/bin/docker # Debian's client matches Debian's engine; /usr/local/bin may not

log() { echo "dockerd.sh: $*" >&2; }

# An engine answering on DOCKER_HOST or the default socket is somebody else's: use it.
existing_host() {
    local host
    for host in "${DOCKER_HOST:-}" unix:///var/run/docker.sock; do
        [ -n "$host" ] || continue
        if DOCKER_HOST=$host timeout 10 "$DOCKER" version >/dev/null 2>&1; then
            echo "$host"
            return 0
        fi
    done
    return 1
}

# Where the engine puts its containers' cgroups: a directory in each hierarchy (cgroup
# v1), or one in the unified hierarchy (v2).
cgroup_candidates() {
    if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
        echo "/sys/fs/cgroup/$CGROUP_PARENT"
    else
        find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d -printf "%p/$CGROUP_PARENT\n"
    fi
}

start() {
    local run_dir=$1 host
    mkdir -p "$run_dir"
    rm -f "$run_dir/started"
    if DOCKER_HOST=unix://$SOCKET timeout 10 "$DOCKER" version >/dev/null 2>&1; then
        # Ours, from a run that could not stop it (killed): adopt it, and stop it after.
        log "adopting the engine left running by an earlier run"
        cp "$EXEC_ROOT/dockerd.pid" "$run_dir/dockerd.pid"
        cgroup_candidates >"$run_dir/cgroups"
        touch "$run_dir/started"
        echo "unix://$SOCKET"
        return 0
    fi
    if host=$(existing_host); then
        log "using the Docker engine already running at $host"
        echo "$host"
        return 0
    fi
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
    # The cgroup directories the engine will create, unless they exist.
    cgroup_candidates | while read -r cgroup; do
        [ -d "$cgroup" ] || echo "$cgroup"
    done >"$run_dir/cgroups"
    # Plugin discovery is always in /run/docker/plugins, whatever the exec root.
    [ -e /run/docker ] || touch "$run_dir/run-docker"
    local -a options=(
        --host "unix://$SOCKET" --pidfile "$EXEC_ROOT/dockerd.pid"
        --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT"
        # No docker0, no NAT or filter rules, no forwarding: nothing on the host's network
        # changes. Containers and builds run with host networking.
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
        --userland-proxy=false
        # Containers' cgroups under a parent of our own, removed again by `stop`.
        --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/$CGROUP_PARENT"
    )
    # Our own configuration file, so that a system /etc/docker/daemon.json (bridges,
    # registries) does not apply. Engines before 23 create /etc/docker/key.json at their
    # first start unless told to keep it elsewhere: with the rest of this engine's state.
    if [ "$(/usr/sbin/dockerd --version | sed -E 's/^Docker version ([0-9]+).*/\1/')" -lt 23 ]; then
        printf '{"deprecated-key-path": "%s"}\n' "$DATA_ROOT/key.json" >"$run_dir/daemon.json"
    else
        echo '{}' >"$run_dir/daemon.json"
    fi
    options+=(--config-file "$run_dir/daemon.json")
    if [ -n "${FEEDWORK_DOCKER_STORAGE:-}" ]; then
        options+=(--storage-driver "$FEEDWORK_DOCKER_STORAGE")
    fi
    # setsid: the engine gets its own process group, so a Ctrl-C at the terminal reaches
    # the run's cleanup, which stops the engine in order, rather than the engine itself.
    setsid /usr/sbin/dockerd "${options[@]}" >"$run_dir/dockerd.log" 2>&1 </dev/null &
    echo $! >"$run_dir/dockerd.pid"
    touch "$run_dir/started"
    for _ in $(seq 1 60); do
        if DOCKER_HOST=unix://$SOCKET timeout 5 "$DOCKER" version >/dev/null 2>&1; then
            # The engine's own pid file is authoritative (setsid may have forked).
            cp "$EXEC_ROOT/dockerd.pid" "$run_dir/dockerd.pid"
            log "started dockerd (pid $(cat "$run_dir/dockerd.pid"), log $run_dir/dockerd.log)"
            echo "unix://$SOCKET"
            return 0
        fi
        if ! kill -0 "$(cat "$run_dir/dockerd.pid")" 2>/dev/null; then
            break
        fi
        sleep 1
    done
    log "dockerd did not come up; the end of its log:"
    tail -n 20 "$run_dir/dockerd.log" >&2
    return 1
}

stop() {
    local run_dir=$1 pid
    [ -e "$run_dir/started" ] || return 0
    pid=$(cat "$run_dir/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        # dockerd stops its containers (10 s each at most) and its containerd, then exits.
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd (pid $pid) still running after 30 s; killing it and its containerd"
            kill -KILL "$pid" 2>/dev/null || true
            kill -KILL "$(cat "$EXEC_ROOT/containerd/containerd.pid" 2>/dev/null)" 2>/dev/null || true
            sleep 1
        fi
    fi
    rm -f "$run_dir/started"
    # Empty once the engine's containers are gone; rmdir refuses a cgroup still in use.
    while read -r cgroup; do
        if [ -d "$cgroup" ]; then
            find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null ||
                log "could not remove cgroup $cgroup"
        fi
    done < <(cat "$run_dir/cgroups" 2>/dev/null)
    if [ -e "$run_dir/run-docker" ]; then
        rmdir /run/docker/plugins /run/docker 2>/dev/null || log "/run/docker is not empty; leaving it"
        rm -f "$run_dir/run-docker"
    fi
    # The exec root holds only runtime state (socket, pid files, containerd's state).
    # The engine leaves one mount there when it exits: the host's network namespace,
    # bound to netns/default once a container used host networking.
    if ! kill -0 "$pid" 2>/dev/null; then
        findmnt -rn -o TARGET | { grep "^$EXEC_ROOT/" || true; } | sort -r |
            while read -r target; do umount "$target" || umount -l "$target"; done
    fi
    if ! findmnt -rn -o TARGET | grep -q "^$EXEC_ROOT"; then
        rm -rf --one-file-system "$EXEC_ROOT"
    else
        log "mounts remain under $EXEC_ROOT; leaving it"
    fi
    log "stopped dockerd (pid $pid)"
}

case "${1:-}" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *)
        echo "usage: $0 start|stop RUN_DIR" >&2
        exit 2
        ;;
esac
