#!/usr/bin/env bash
# Build a minimal local base image (Debian bookworm with python3) for testing the Dockerfile
# where no image registry is reachable:  docker/test-base.sh [TAG]
set -euo pipefail
tag=${1:-flare22-test-base:bookworm}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" \
    http://deb.debian.org/debian >/dev/null
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "$tag"
