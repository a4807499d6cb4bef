#!/bin/sh
# Build local stand-ins for the public base images, for an engine that cannot pull them:
#
#   toolbox-sweeps-local/debian:bookworm       debootstrap's minimal Debian 12 (for debian:bookworm-slim)
#   toolbox-sweeps-local/python:3.11-bookworm  Debian's python3 3.11 (for python:3.11-slim-bookworm)
#   toolbox-sweeps-local/postgres:15-bookworm  Debian's PostgreSQL 15, with the official image's
#                                              entrypoint contract (for postgres:17-bookworm)
#
# Everything comes from a Debian mirror (DEBIAN_MIRROR). Needs root and debootstrap. An image that
# already exists is kept; REBUILD=1 builds all three again. The root filesystem tarball is cached
# in SWEEPS_CACHE_DIR (default ~/.cache/toolbox-sweeps) so a fresh engine imports it without
# running debootstrap again.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${SWEEPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/toolbox-sweeps}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
prefix=toolbox-sweeps-local
debian=$prefix/debian:bookworm
python=$prefix/python:3.11-bookworm
postgres=$prefix/postgres:15-bookworm

have() { [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

rootfs_tarball() {
    tarball=$cache/debian-bookworm-minbase.tar
    [ -s "$tarball" ] && [ "${REBUILD:-0}" != 1 ] && return 0
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >&2
    rootfs=$work/rootfs
    # Keep the image small: no package lists, caches, docs or man pages.
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    # Mirrors and snapshots may serve Release files past their Valid-Until date.
    echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/99no-valid-until"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$work"
    trap - EXIT
}

if ! have "$debian"; then
    rootfs_tarball
    docker import --change 'CMD ["bash"]' "$cache/debian-bookworm-minbase.tar" "$debian"
fi
have "$python" || docker build -t "$python" --build-arg DEBIAN_IMAGE="$debian" \
    -f "$here/python.Dockerfile" "$here"
have "$postgres" || docker build -t "$postgres" --build-arg DEBIAN_IMAGE="$debian" \
    -f "$here/postgres.Dockerfile" "$here"
docker image ls "$prefix/*"
