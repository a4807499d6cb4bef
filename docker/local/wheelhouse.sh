#!/bin/sh
# Make the wheelhouse for an image build without a package index (the images' OFFLINE=1 build):
# every wheel that `pip install -c constraints.txt .[s3]` needs, for Linux x86_64 and CPython
# 3.11 (pip wheel builds the few sdists into wheels), plus pip and setuptools, and
# requirements.txt, the exact pins of the project's dependencies. Run with Python 3.11 where an
# index is reachable; then build on the air-gapped machine.
#
# The wheels are kept in SWEEPS_CACHE_DIR/wheelhouse (default ~/.cache/toolbox-sweeps), reused by
# every checkout and refreshed when constraints.txt or pyproject.toml change, and hard-linked into
# docker/wheelhouse/, the folder the Dockerfile copies. TORCH_CPU_INDEX (e.g. PyTorch's CPU wheel
# index) adds torch's CPU wheels under torch-cpu/, which the cpu variant then prefers.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${SWEEPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/toolbox-sweeps}/wheelhouse
dest=$root/docker/wheelhouse
python=${PYTHON:-python3.11}
stamp=$(cat "$root/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -c1-16)

if [ "$(cat "$cache/.stamp" 2>/dev/null)" != "$stamp" ]; then
    mkdir -p "$cache"
    # --find-links: wheels already there are not fetched again.
    "$python" -m pip wheel --wheel-dir "$cache" --find-links "$cache" \
        -c "$root/constraints.txt" "$root[s3]" pip setuptools wheel
    rm -f "$cache"/toolbox_sweeps-*.whl  # the project itself is installed from its source
    # The project's dependencies as exact pins (no extras): the image installs them before it
    # reads pyproject.toml, so edits there that leave the dependencies alone cost no rebuild.
    "$python" -m pip install --dry-run --ignore-installed --quiet --report "$cache/report.json" \
        --no-index --find-links "$cache" -c "$root/constraints.txt" "$root"
    "$python" - "$cache/report.json" >"$cache/requirements.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if meta["name"] != "toolbox-sweeps":
        print(f"{meta['name']}=={meta['version']}")
PY
    rm -f "$cache/report.json"
    if [ -n "${TORCH_CPU_INDEX:-}" ]; then
        "$python" -m pip download --no-deps --dest "$cache/torch-cpu" --index-url "$TORCH_CPU_INDEX" \
            -c "$root/constraints.txt" torch torchvision
    fi
    echo "$stamp" >"$cache/.stamp"
fi
# Hard links cost no space; a copy where the cache is on another filesystem.
find "$dest" -mindepth 1 ! -name README.md -exec rm -rf {} +
cp -al "$cache/." "$dest/" 2>/dev/null || cp -a "$cache/." "$dest/"
rm -f "$dest/.stamp"
du -sh "$dest"
