"""Benchmark: a burst of small sweeps, submitted at once, until all of them are final.

15 one-trial, one-epoch digits sweeps (a tiny MLP, 1 CPU per trial) are POSTed at once to the
API of the embedded stack (:class:`service.cli.stack.Stack`: a real Ray head, MLflow server and
API process, in a temporary directory on free loopback ports), and the wall time from the first
POST until every sweep is final is measured. Each mode is a set of the service's settings,
measured on a stack of its own started for it, in the same run, one after another (round
robin when ``--rounds`` > 1):

- ``baseline``: the driver pool as it was before warm drivers were sized to the cluster: one
  standby, topped up only while no sweep is open, no cap on the sweep jobs started at once.
- ``warm``: the defaults (ARCHITECTURE.md, "Warm standby drivers"): drivers and trial
  workers forked from the zygotes, a standby per CPU of the cluster, topped up during bursts.

The sweeps pack their trials as by default (a one-trial sweep's pack has one member and is never
probed); ``--no-packing`` turns packs off, leaving the start-up of drivers and trial workers
alone to measure.

Before every burst the benchmark waits until ``/readyz`` reports the standbys ready. It prints,
per mode, the burst's wall time, where each sweep's time went (waiting for a driver, the
driver's start-up from its job's log, Tune's set-up and fit) and the CPU seconds of each kind
of process (:mod:`cpu_meter`), then the ratio baseline / warm. These machines are noisy: the
ratio within one run is the number to compare, never an absolute time.
Run: ``python bench/bench_burst.py [--sweeps N] [--rounds R] [--modes baseline,warm]
[--no-packing]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import cpu_meter
from bench_service_overhead import kill_leftovers, settle
from cpu_meter import CpuMeter

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

FINAL = {"completed", "failed", "cancelled"}
TIMEOUT_S = 900.0
TARGET_S = 60.0
MODES: dict[str, dict[str, Any]] = {
    "baseline": {"warm_drivers": 1, "driver_zygote": False, "worker_zygote": False},
    "warm": {},
}
"""Each mode's settings on top of the defaults (``warm`` is the defaults)."""
JOB_TIMES = {
    "exec to main": re.compile(r"job start-up: ([\d.]+) s from exec to main"),
    "driver imports": re.compile(r"driver imports ([\d.]+) s"),
    "ray.init": re.compile(r"ray\.init ([\d.]+) s"),
    "tune set-up": re.compile(r"set-up ([\d.]+) s, Tuner ([\d.]+) s"),
    "fit": re.compile(r"fit ([\d.]+) s"),
}


@contextlib.contextmanager
def embedded_stack(root: Path, overrides: dict[str, Any]) -> Iterator[Any]:
    """The project's own stack (MLflow, Ray head, API) under ``root`` with ``overrides`` on
    the settings, started; yields the :class:`~service.cli.stack.Stack`."""
    from service.cli.stack import Stack, free_port
    from service.config import Settings

    settings = Settings(
        database_url=f"sqlite:///{root}/sweeps.db",
        database_url_file=root / "secrets" / "database-url",
        ray_address=f"127.0.0.1:{free_port()}",
        ray_dashboard_url=f"http://127.0.0.1:{free_port()}",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        storage_path=str(root / "tune"),
        api_token=secrets.token_hex(16),
        port=free_port(),
        job_python=sys.executable,
        max_open_sweeps=100,
        rate_limit="100000/minute",
        **overrides,
    )
    stack = Stack(settings, state_dir=root)
    stack.ray_temp = root / "ray"
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        kill_leftovers(str(root))


class RoleMeter(CpuMeter):
    """:class:`CpuMeter` with Ray's workers told apart by the title Ray gives them once they
    run something (``ray::JobSupervisor``, a trial's ``ray::ImplicitFunc``...), read at every
    sample rather than at first sight."""

    def _sample(self, first: bool) -> None:
        super()._sample(first)
        for pid, role in self._role.items():
            if role == "ray workers" and pid in self._last:
                title = cpu_meter._cmdline(pid)
                if title.startswith("ray::"):
                    self._role[pid] = "ray " + title.split()[0].removeprefix("ray::")[:24]


def sweep_body(i: int, packing: bool = True) -> dict[str, Any]:
    """The ``i``-th sweep of the burst: one trial of one epoch on digits (``packing``: the
    sweep's packs, on by default, whose size the driver probes once per shape)."""
    return {
        "packing": {"enabled": packing},
        "name": f"burst-{i}",
        "dataset": "digits",
        "model": {"arch": "mlp", "width": 32, "depth": 1},
        "epochs": 1,
        "method": "grid",
        "parameters": {"optim.lr": [0.05 + 0.001 * i]},
        "max_concurrent": 1,
        "resources_per_trial": {"cpu": 1},
    }


def burst(client: Any, n: int, packing: bool) -> tuple[float, list[dict[str, Any]]]:
    """POST ``n`` sweeps at once and wait until all are final; wall seconds and the sweeps."""
    t0 = time.perf_counter()
    bodies = [sweep_body(i, packing) for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        ids = [s["id"] for s in pool.map(client.submit, bodies)]
    while True:
        listed = {s["id"]: s for s in client.list(limit=100)["data"]}
        sweeps = [listed[i] for i in ids]
        if all(s["status"] in FINAL for s in sweeps):
            break
        if time.perf_counter() - t0 > TIMEOUT_S:
            raise RuntimeError(f"sweeps not final after {TIMEOUT_S:.0f} s: {sweeps}")
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    for s in sweeps:
        if s["status"] != "completed":
            print(f"  sweep {s['id']} ended {s['status']}: {s['message']}", flush=True)
    return wall, sweeps


def phases(sweeps: list[dict[str, Any]], logs: dict[str, str]) -> dict[str, float]:
    """Median seconds per phase of a sweep: created to started (job start-up and the wait for
    a driver), started to ended (Tune), and what the sweep's job log says it spent on."""
    out: dict[str, list[float]] = {}
    for s in sweeps:
        created, started, ended = (
            datetime.fromisoformat(s[k]) for k in ("created_at", "started_at", "ended_at")
        )
        out.setdefault("created to started", []).append((started - created).total_seconds())
        out.setdefault("started to ended", []).append((ended - started).total_seconds())
        text = logs.get(s["ray_job_id"], "")
        for name, pattern in JOB_TIMES.items():
            if found := pattern.search(text):
                out.setdefault(name, []).append(sum(float(g) for g in found.groups()))
    return {k: statistics.median(v) for k, v in out.items()}


def run_mode(
    name: str, overrides: dict[str, Any], n: int, root: Path, packing: bool
) -> dict[str, Any]:
    """One burst on a stack of its own started with the mode's settings."""
    from service.cli.client import SweepsClient
    from workers.jobs import RayJobs

    where = root / name
    where.mkdir()
    with embedded_stack(where, overrides) as stack:
        s = stack.settings
        client = SweepsClient(s.api_url, s.api_token.get_secret_value(), timeout=60)
        jobs = RayJobs(s.ray_dashboard_url, s.ray_auth_token.get_secret_value())
        settle(client)
        warm = client.ready().get("warm_drivers")
        meter = RoleMeter()
        meter.start()
        wall, sweeps = burst(client, n, packing)
        cpu = meter.stop()
        logs = {sw["ray_job_id"]: jobs.logs(sw["ray_job_id"]) for sw in sweeps}
    return {"wall": wall, "cpu": cpu, "phases": phases(sweeps, logs), "warm": warm}


def main() -> None:
    """Parse the options, run each mode's burst, print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=15, help="sweeps in the burst")
    parser.add_argument("--rounds", type=int, default=1, help="bursts per mode")
    parser.add_argument(
        "--no-packing", action="store_true", help="sweeps without packs (no pack-size probe)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of " + "/".join(MODES)
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the stacks are stopped
    print(
        f"cpus={os.cpu_count()} load_average_1min={os.getloadavg()[0]:.2f} sweeps={args.sweeps} "
        f"(1 trial x 1 epoch, digits MLP 32x1, 1 CPU per trial) modes={modes} "
        f"rounds={args.rounds} packing={not args.no_packing}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="bbur-", dir="/tmp"))  # short: Ray's socket paths
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for r in range(args.rounds):
            for mode in modes:
                out = run_mode(f"{mode}-{r}", MODES[mode], args.sweeps, root, not args.no_packing)
                results[mode].append(out)
                shown = ", ".join(f"{k} {v:.2f}" for k, v in out["phases"].items())
                cpu = ", ".join(
                    f"{k} {v:.1f}" for k, v in sorted(out["cpu"].items(), key=lambda x: -x[1])
                )
                print(
                    f"round {r} {mode}: {out['wall']:.1f} s (standbys before: {out['warm']})\n"
                    f"  per sweep (median s): {shown}\n"
                    f"  CPU s by role: total {sum(out['cpu'].values()):.1f}: {cpu}",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    walls = {m: statistics.median(o["wall"] for o in results[m]) for m in modes}
    for mode, wall in walls.items():
        ok = "ok" if wall < TARGET_S else "MISSED"
        print(
            f"{mode:10s} burst of {args.sweeps}: {wall:7.1f} s  (target < {TARGET_S:.0f} s: {ok})"
        )
    if "baseline" in walls and "warm" in walls:
        print(f"ratio baseline / warm: {walls['baseline'] / walls['warm']:.2f}x")


if __name__ == "__main__":
    main()
