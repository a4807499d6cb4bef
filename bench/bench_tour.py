"""Benchmark: ``make run``'s toolbox tour, as a new user runs it, for three seeds.

For each seed (the tour's own, 7, then 1 and 2) ``sweeps demo --exit`` runs
``examples/toolbox-tour.yaml`` with that seed in a fresh folder (its own state, database, Ray
and MLflow server, on free loopback ports): the whole command timed, stack start and stop
included, install excluded. Prints each run's wall time, best validation accuracy and the
summary of what helped. Targets (issue 21, 2 CPU cores): best >= 0.95 for each seed, each run
under 2 minutes.
Run: ``python bench/bench_tour.py [--seeds 7 1 2]``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TOUR = Path(__file__).parents[1] / "examples" / "toolbox-tour.yaml"
SWEEPS = Path(sys.executable).parent / "sweeps"
BEST = re.compile(r"best trial #(?P<number>\d+): val_accuracy=(?P<value>[\d.]+)")
TIMEOUT_S = 900
BEST_TARGET, SECONDS_TARGET = 0.95, 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_tour(seed: int) -> tuple[float, float | None, str]:
    """``sweeps demo --exit`` on the tour with ``seed``: (wall seconds, best, its output)."""
    with tempfile.TemporaryDirectory(prefix="bench-tour-") as root:
        spec = {**yaml.safe_load(TOUR.read_text()), "seed": seed}
        (Path(root) / "tour.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEPS_", "RAY_"))}
        env |= {
            "SWEEPS_PORT": str(free_port()),
            "SWEEPS_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "SWEEPS_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
            "SWEEPS_RAY_DASHBOARD_URL": f"http://127.0.0.1:{free_port()}",
            "COLUMNS": "160",
        }
        started = time.perf_counter()
        done = subprocess.run(
            [str(SWEEPS), "demo", "--exit", "tour.yaml"], cwd=root, env=env,
            capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        wall = time.perf_counter() - started
    out = done.stdout + done.stderr
    found = BEST.search(out)
    return wall, (float(found["value"]) if found else None), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 1, 2])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        wall, best, out = run_tour(seed)
        rows.append((seed, wall, best))
        print(f"seed {seed}: {wall:.1f} s, best val_accuracy {best}", flush=True)
        helped = out[out.find("what helped") :].splitlines()[:7] if "what helped" in out else []
        print("\n".join(f"    {line}" for line in helped) or out[-2000:], flush=True)
    print("\nseed  wall s  best    targets: best >= 0.95, wall < 120 s")
    for seed, wall, best in rows:
        ok = best is not None and best >= BEST_TARGET and wall < SECONDS_TARGET
        shown = "-" if best is None else f"{best:.4f}"
        print(f"{seed:>4}  {wall:6.1f}  {shown:<6}  {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
