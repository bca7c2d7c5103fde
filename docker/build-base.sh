#!/usr/bin/env bash
# Builds a Debian bookworm base image without any image registry: debootstrap a minimal
# root filesystem from the Debian mirror and `docker import` it. Skips the work when the
# image already exists (--force rebuilds it).
#
#   docker/build-base.sh [--force]
#
# Environment: FEEDWORK_BASE_TAG (default feedwork/base:bookworm), FEEDWORK_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), DOCKER_HOST (the engine to import into).
#
# The image has apt, ca-certificates and netbase, trusts the CA certificates this host
# added under /usr/local/share/ca-certificates (so that apt and pip inside builds work
# behind the same TLS-inspecting proxy as the host; the image is for this machine only),
# and apt there installs no recommends, documentation or translations and keeps no
# caches. The root filesystem is built
# in a scratch directory under /tmp and deleted afterwards, failed or not.
set -euo pipefail

TAG=${FEEDWORK_BASE_TAG:-feedwork/base:bookworm}
MIRROR=${FEEDWORK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DOCKER=${DOCKER:-/usr/bin/docker}

log() { echo "build-base: $*" >&2; }

if [ "${1:-}" != --force ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists; skipping (--force rebuilds it)"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        debootstrap >/dev/null
fi

scratch=$(mktemp -d /tmp/feedwork-base.XXXXXX)
rootfs=$scratch/rootfs

# debootstrap mounts /proc and /sys inside the target while it works; unmount whatever is
# still there before deleting, and never cross into another filesystem while deleting.
mounts_inside() { findmnt -rn -o TARGET | { grep "^$rootfs/" || true; } | sort -r; }
unmount_inside() {
    mounts_inside | while read -r target; do umount -l "$target" || true; done
    if [ -n "$(mounts_inside)" ]; then
        log "still mounted under $rootfs: $(mounts_inside | tr '\n' ' ')"
        return 1
    fi
}
cleanup() {
    unmount_inside && rm -rf --one-file-system "$scratch"
}
trap cleanup EXIT

started=$(date +%s)
log "debootstrap $SUITE from $MIRROR (minbase) into $rootfs"
timeout 1200 debootstrap --variant=minbase --include=ca-certificates,netbase \
    "$SUITE" "$rootfs" "$MIRROR" >"$scratch/debootstrap.log" 2>&1 || {
    tail -n 30 "$scratch/debootstrap.log" >&2
    exit 1
}

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
cat >"$rootfs/etc/apt/apt.conf.d/90feedwork" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Acquire::Languages "none";
EOF
# Like Debian's -slim images: no documentation, manual pages or translations, now or in
# the packages that derived images install (copyright files stay).
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90feedwork-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
# Every path below starts with "$rootfs/": set -u has already stopped the script if it
# were unset, and this guard makes sure it is not empty either.
[ -n "$rootfs" ] && [ "$rootfs" != / ] || exit 1
find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
for dir in man groff info lintian locale; do
    if [ -d "$rootfs/usr/share/$dir" ]; then
        find "$rootfs/usr/share/$dir" -mindepth 1 -delete
    fi
done
# Package scripts must not try to start services inside an image build.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
fi

unmount_inside # /dev below is the image's own, never a bind mount of the host's
rm -rf --one-file-system "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/archives/*.deb \
    "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/var/log/*.log "${rootfs:?}"/dev/*

log "importing as $TAG"
previous=$("$DOCKER" image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$TAG" >/dev/null
# A rebuild leaves the previous base untagged; drop it unless images still use it.
if [ -n "$previous" ]; then
    "$DOCKER" image rm "$previous" >/dev/null 2>&1 || true
fi
log "$TAG built in $(($(date +%s) - started)) s, $("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1 / 1e6}')"
