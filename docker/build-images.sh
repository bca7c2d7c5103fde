#!/usr/bin/env bash
# Builds every image the compose file needs, without a registry, on the engine at
# DOCKER_HOST (or the default socket):
#
#   feedwork/base:bookworm         debootstrap of Debian bookworm (docker/build-base.sh)
#   feedwork/python:3.11-bookworm  Debian's Python 3.11 in a virtual environment
#   feedwork/postgres:15-bookworm  Debian's PostgreSQL 15
#   feedwork:latest                the root Dockerfile on feedwork/python:3.11-bookworm
#
# Builds use host networking (apt and pip need the network; the engine may have no
# bridge) and the engine's layer cache, so a second run takes seconds. Prints each
# build's time and each image's size.
set -euo pipefail

cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER

log() { echo "build-images: $*" >&2; }

timed() {
    local name=$1 started
    shift
    started=$(date +%s)
    "$@"
    log "$name: $(($(date +%s) - started)) s"
}

build() {
    local tag=$1 previous
    shift
    previous=$("$DOCKER" image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    # --quiet keeps the log short; a failed build prints its output all the same.
    timeout 1200 "$DOCKER" build --quiet --network host --tag "$tag" "$@" >/dev/null
    # A changed build leaves the previous image untagged: drop it (unless in use).
    if [ -n "$previous" ] && [ "$previous" != "$("$DOCKER" image inspect -f '{{.Id}}' "$tag")" ]; then
        "$DOCKER" image rm "$previous" >/dev/null 2>&1 || true
    fi
}

timed feedwork/base:bookworm docker/build-base.sh
timed feedwork/python:3.11-bookworm build feedwork/python:3.11-bookworm \
    --file docker/python.Dockerfile docker
timed feedwork/postgres:15-bookworm build feedwork/postgres:15-bookworm \
    --file docker/postgres.Dockerfile docker
timed feedwork:latest build feedwork:latest \
    --build-arg BASE_IMAGE=feedwork/python:3.11-bookworm .

"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E '^feedwork(/[a-z]+)?:' | sort | sed 's/^/build-images: /' >&2
