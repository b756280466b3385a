#!/usr/bin/env bash
# Build the local base image (Debian bookworm + its python3.11) with debootstrap
# and import it into the engine, because no registry image can be pulled here.
# Same role as python:3.11-slim; Dockerfiles take either through ARG BASE_IMAGE.
#   deploy/scripts/base-image.sh [tag]     (default taxidriver/base:bookworm)
set -euo pipefail
TAG=${1:-taxidriver/base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${BASE_WORK:-/tmp/td-base}
DOCKER=${DOCKER:-docker}

if $DOCKER image inspect "$TAG" >/dev/null 2>&1 && [ -z "${REBUILD_BASE:-}" ]; then
  echo "base-image: $TAG already present (REBUILD_BASE=1 to rebuild)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base-image: debootstrap missing (apt-get install -y debootstrap)" >&2; exit 1; }

rootfs="$WORK/rootfs"
rm -rf "$rootfs"
mkdir -p "$WORK"
# minbase + python3 (3.11.2 in bookworm) + venv/ensurepip for the build stage,
# CA certificates for TLS to an external PostgreSQL. zlib (minbase) is all the
# PostgreSQL binaries of the postgres image need.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tzdata \
  bookworm "$rootfs" "$MIRROR"
# Slim it like the official slim images: no apt lists, docs, man pages or caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
# The official python images provide `python`; scripts and probes here use it.
ln -sf python3 "$rootfs/usr/bin/python"
tar -C "$rootfs" -c . | $DOCKER import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$TAG"
rm -rf "$rootfs"
$DOCKER image ls "$TAG"
