#!/usr/bin/env bash
# `make test-deploy`: the compose stack end to end on a real Docker engine. Needs root (it
# installs docker.io, docker-compose and debootstrap when missing, and starts dockerd when no
# engine answers, stopping it afterwards); where the machine does not allow that, prints one
# SKIP line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "SKIP test-deploy: $*"; exit 0; }

[ "$(id -u)" = 0 ] || skip "not root (installing docker.io and starting dockerd need root)"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >/dev/null || skip "apt-get could not install ${missing[*]}"
fi

started=""
stop_engine() {
    [ -n "$started" ] || return 0
    kill "$started" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$started" 2>/dev/null || return 0; sleep 1; done
}
if ! docker info >/dev/null 2>&1; then
    log=$(mktemp /tmp/dockerd.XXXXXX.log)
    dockerd >"$log" 2>&1 &
    started=$!
    trap stop_engine EXIT
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    if ! docker info >/dev/null 2>&1; then
        reason=$(grep -m1 -iE "error|failed" "$log" || tail -n1 "$log")
        stop_engine
        started=""
        skip "dockerd cannot start here: ${reason:-no reason given} (log: $log)"
    fi
fi

# Arguments: which tests (default: all of tests/deploy; `make soak` names the soak alone), or
# --images to build the images and stop (`make deploy-images`).
if [ "${1:-}" = --images ]; then
    .venv/bin/python -m tests.deploy.stack
else
    .venv/bin/pytest -m deploy -p no:cacheprovider -s "${@:-tests/deploy}"
fi
