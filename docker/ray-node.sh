#!/bin/sh
# Start a Ray node with token authentication: `ray-node head` or `ray-node worker HEAD:PORT`.
#
# Every node of a cluster must hold the same token. Ray reads it from RAY_AUTH_TOKEN (or from the
# file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) once RAY_AUTH_MODE=token; the GCS then
# rejects nodes and drivers with another token, and the dashboard (Jobs API) answers 401/403 to
# requests without `Authorization: Bearer <token>`. Extra arguments go to `ray start`.
set -eu

min_length=16
if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    RAY_AUTH_TOKEN=$(cat "$RAY_AUTH_TOKEN_PATH")
fi
token=${RAY_AUTH_TOKEN:-}
case "$token" in
    "" | *change-me* | *changeme*)
        echo "ray-node: set SWEEPS_RAY_AUTH_TOKEN to a secret (e.g. \`openssl rand -hex 32\`);" \
             "refusing to start a Ray node with an empty or placeholder token" >&2
        exit 64 ;;
esac
if [ "${#token}" -lt "$min_length" ]; then
    echo "ray-node: the Ray token must be at least $min_length characters" >&2
    exit 64
fi
export RAY_AUTH_MODE=token
# No Prometheus reads Ray's metrics, and a node's dashboard agent kept a series per worker
# process name it ever saw (every sweep's job supervisor has its own): memory without bound.
# The embedded stack sets the same (service/cli/stack.py, RAY_NODE_ENV).
export RAY_enable_metrics_collection=0

role=${1:?usage: ray-node head | ray-node worker HEAD:PORT}
shift
case "$role" in
    head)
        # The head takes no trials (no CPUs or GPUs to offer) but runs the sweep drivers the
        # API submits, which need none.
        exec ray start --head --block --disable-usage-stats \
            --port=6379 --ray-client-server-port=10001 \
            --dashboard-host=0.0.0.0 --dashboard-port=8265 \
            --num-cpus=0 --num-gpus=0 "$@" ;;
    worker)
        address=${1:?usage: ray-node worker HEAD:PORT}
        shift
        exec ray start --address="$address" --block --disable-usage-stats "$@" ;;
    *)
        echo "ray-node: unknown role '$role' (head or worker)" >&2
        exit 64 ;;
esac
