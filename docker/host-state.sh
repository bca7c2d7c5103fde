#!/usr/bin/env bash
# What a Docker run could leave behind on this host, recorded so that a run can prove it
# left nothing: network interfaces and addresses, iptables/ip6tables/nft rules, forwarding
# sysctls, mounts, cgroup directories, Docker's files in /etc, /var/lib and /run,
# Docker-related processes, and listeners on the ports the run uses.
#
#   docker/host-state.sh snapshot DIR [PORT...]   write one file per aspect into DIR
#   docker/host-state.sh diff BEFORE AFTER        print the differences; exit 1 if any
#
# Only what a Docker engine or its containers create is compared, so that other programs
# starting and stopping processes on the same machine meanwhile do not count as leftovers.
set -uo pipefail

# Processes that belong to a Docker engine or run inside a container (their cgroup path
# names docker, containerd or a moby scope). Listed as "comm args" without pids, so a
# process that is still there compares equal.
docker_processes() {
    local pid comm
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        case "$comm" in
            dockerd | containerd | containerd-shim* | runc | docker-proxy | docker-init) ;;
            *) grep -qE 'docker|containerd|moby' "/proc/$pid/cgroup" 2>/dev/null || continue ;;
        esac
        printf '%s %s\n' "$comm" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    done | sort
}

# iptables-save output without its timestamp comments and packet counters.
rules() {
    local tool=$1
    if command -v "$tool" >/dev/null 2>&1; then
        "$tool" 2>&1 | grep -v '^#' | sed -E 's/\[[0-9]+:[0-9]+\]$//'
    else
        echo "($tool not installed)"
    fi
}

listeners() {
    local port
    for port in "$@"; do
        ss -Hltn "sport = :$port" 2>/dev/null | awk -v p="$port" '{print p, $4}'
    done | sort
}

snapshot() {
    local dir=$1 path
    shift
    mkdir -p "$dir"
    ip -br link 2>&1 | awk '{print $1, $2, $4}' | sort >"$dir/links"
    ip -br addr 2>&1 | awk '{$2 = ""; print}' | sort >"$dir/addresses"
    {
        rules iptables-save
        rules ip6tables-save
        if command -v nft >/dev/null 2>&1; then nft list ruleset 2>&1; fi
    } >"$dir/firewall"
    sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding >"$dir/sysctl" 2>&1
    awk '{print $2, $3}' /proc/self/mounts | sort >"$dir/mounts"
    find /sys/fs/cgroup -maxdepth 3 -type d \( -name '*docker*' -o -name '*moby*' \) \
        2>/dev/null | sort >"$dir/cgroups"
    for path in /etc/docker/* /var/lib/docker /var/run/docker* /run/docker*; do
        if [ -e "$path" ]; then echo "$path"; fi
    done | sort -u >"$dir/files"
    docker_processes >"$dir/processes"
    listeners "$@" >"$dir/listeners"
}

diff_snapshots() {
    local before=$1 after=$2 aspect status=0
    for aspect in links addresses firewall sysctl mounts cgroups files processes listeners; do
        if ! diff -u --label "$aspect (before)" --label "$aspect (after)" \
            "$before/$aspect" "$after/$aspect"; then
            status=1
        fi
    done
    return $status
}

case "${1:-}" in
    snapshot) shift && snapshot "$@" ;;
    diff) shift && diff_snapshots "$@" ;;
    *)
        echo "usage: $0 snapshot DIR [PORT...] | diff BEFORE AFTER" >&2
        exit 2
        ;;
esac
