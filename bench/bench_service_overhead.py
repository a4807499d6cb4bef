"""Benchmark: what the service costs on top of Ray Tune, for the same trials.

One fixed grid (8 trials by default: 4 learning rates x 2 momenta, a small MLP on digits, a few
epochs; 1 CPU per trial, 2 trials at a time, actors reused) run three ways:

- ``service``: ``POST /sweeps`` to a real API process (uvicorn) started by
  :class:`service.cli.stack.Stack` with a real Ray head and a real MLflow server, then
  ``GET /sweeps/{id}?wait=60`` (a long poll, answered when the sweep is final; ``--poll S``
  polls every S seconds instead) until the sweep is final. Wall time from the
  POST to the final status: handing the sweep to its job, the driver, Tune, the database sink
  and MLflow tracking included. The API keeps ``--warm-drivers`` standby jobs (its default, 1;
  ``--warm-drivers 0`` measures a job started per sweep); a standby warms up while no sweep
  runs, so before every timed run of any mode the benchmark waits until ``/readyz`` reports
  the standbys ready, and no mode is timed while one warms up.
- ``ray tune``: a :class:`ray.tune.Tuner` in this process, connected to the same Ray cluster,
  over the trainable a plain Tune user would write (:func:`plain_tune.train_one`: the same
  training, a checkpoint every epoch) with the same parameter space, resources,
  ``max_concurrent_trials`` and ``reuse_actors``, without database or MLflow, and otherwise
  Tune's defaults (every checkpoint kept, result files written). Wall time of
  ``Tuner.fit``, as a user of Ray Tune scripts would time it.
- ``toolbox``: :func:`toolbox.train.train` for each configuration, one after another in this
  process, with ``max_concurrent x cpu`` torch threads (the sweep's CPU budget).

The modes alternate, round after round, after one warm-up round; medians are reported, with the
CPU seconds each kind of process used in each mode (:mod:`cpu_meter`: API, MLflow server, sweep
driver, Ray workers, Ray's own processes, this one). The
stack lives in a temporary directory on free loopback ports and is stopped at the end, even on
error: its process groups are killed, then any process of ours still naming that directory.
Run: ``python bench/bench_service_overhead.py [--rounds R] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cpu_meter import CpuMeter

# The stack's Ray cluster is on loopback only: this process's ray.init needs Ray's
# single-machine mode, read when Ray is first imported (service.cli.stack.RAY_LOOPBACK_ENV).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

FINAL = {"completed", "failed", "cancelled"}
SERVICE, TUNE, TOOLBOX = (
    "service (REST, end to end)",
    "ray tune (Tuner.fit)",
    "toolbox (sequential)",
)
PHASES = ("post", "job start-up", "driver", "seen final")
A_B_TARGET, PER_TRIAL_TARGET_S = 1.10, 0.2
TIMEOUT_S = 900
LONG_POLL_S = 60.0


def sweep_body(epochs: int, width: int, concurrency: int) -> dict[str, Any]:
    """The request body of the benchmark's sweep: a fixed 4 x 2 grid on digits, unpacked."""
    return {
        "name": "bench-overhead",
        "dataset": "digits",
        "model": {"arch": "mlp", "width": width, "depth": 2},
        "epochs": epochs,
        "method": "grid",
        "parameters": {"optim.lr": [0.01, 0.03, 0.1, 0.3], "optim.momentum": [0.0, 0.9]},
        "max_concurrent": concurrency,
        "resources_per_trial": {"cpu": 1},
        "packing": {"enabled": False},  # trial for trial against Tune (bench_packs: packed)
    }


@contextlib.contextmanager
def embedded_stack(root: Path, warm_drivers: int | None) -> Iterator[Any]:
    """The project's own stack (MLflow, Ray head, API) under ``root``, started (``warm_drivers``
    None: the settings' default pool); yields the :class:`~service.cli.stack.Stack` (its
    ``settings`` are the ones in use)."""
    from service.cli.stack import Stack, free_port
    from service.config import Settings

    settings = Settings(
        database_url=f"sqlite:///{root}/sweeps.db",
        ray_address=f"127.0.0.1:{free_port()}",
        ray_dashboard_url=f"http://127.0.0.1:{free_port()}",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        storage_path=str(root / "tune"),
        api_token=secrets.token_hex(16),
        port=free_port(),
        job_python=sys.executable,
        warm_drivers=warm_drivers,
    )
    stack = Stack(settings, state_dir=root)
    stack.ray_temp = root / "ray"  # its own, beside the rest of this run
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        kill_leftovers(str(root))


def kill_leftovers(marker: str) -> None:
    """SIGKILL our processes whose command line or environment names ``marker``.

    Ray's workers and a sweep's job driver leave the process groups the stack started; every
    one of them names the stack's directory (session dir, database URL) and nothing else does.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            if marker.encode() in seen:
                os.kill(int(entry.name), signal.SIGKILL)


def settle(client: Any, timeout: float = 180.0) -> None:
    """Wait until the API's standby drivers are ready (none warming up, none missing)."""
    deadline = time.perf_counter() + timeout
    while True:
        warm = client.ready().get("warm_drivers") or {}
        if warm.get("starting") == 0 and warm.get("ready") == warm.get("wanted"):
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"standby drivers not ready after {timeout:.0f} s: {warm}")
        time.sleep(0.5)


@dataclass
class Runs:
    """Wall seconds per mode, and the service's phases per run."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    phases: list[dict[str, float]] = field(default_factory=list)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, mode: str, seconds: float) -> None:
        self.wall.setdefault(mode, []).append(seconds)

    def median(self, mode: str) -> float:
        return statistics.median(self.wall[mode])


def service_run(client: Any, body: dict[str, Any], poll: float, n: int) -> tuple[float, dict]:
    """POST the sweep, wait until final (long polls, or a GET every ``poll`` s when
    ``poll`` > 0); wall seconds and where they went."""
    t0 = time.perf_counter()
    sweep = client.submit(body)
    t_post = time.perf_counter() - t0
    while sweep["status"] not in FINAL:
        if time.perf_counter() - t0 > TIMEOUT_S:
            raise RuntimeError(f"sweep {sweep['id']} not final after {TIMEOUT_S} s: {sweep}")
        if poll:
            time.sleep(poll)
        sweep = client.get(sweep["id"], wait=0.0 if poll else LONG_POLL_S)
    wall = time.perf_counter() - t0
    done = sweep["trial_counts"].get("completed", 0)
    if sweep["status"] != "completed" or done != n:
        raise RuntimeError(f"sweep {sweep['id']} ended {sweep['status']}: {sweep['message']}")
    created, started, ended = (
        datetime.fromisoformat(sweep[k]) for k in ("created_at", "started_at", "ended_at")
    )
    job = (started - created).total_seconds()
    driver = (ended - started).total_seconds()
    phases = dict(zip(PHASES, (t_post, job, driver, wall - t_post - job - driver), strict=True))
    return wall, phases


def tune_run(body: dict[str, Any], storage: Path, n: int) -> float:
    """``Tuner.fit`` over a plain Tune trainable with the same space, resources and
    concurrency."""
    import ray
    from plain_tune import param_space, trainable
    from ray import tune

    from workers.driver.resources import trial_resources
    from workers.spec import SweepSpec

    spec = SweepSpec.model_validate(body)
    resources = trial_resources(spec, ray.cluster_resources())
    tuner = tune.Tuner(
        trainable(spec.base_config, resources.cpu, resources.gpu, spec.variants),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric.name,
            mode=spec.metric.mode,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"direct-{secrets.token_hex(4)}",
            storage_path=str(storage),
            verbose=0,
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    epochs = [(grid[i].metrics or {}).get("training_iteration") for i in range(len(grid))]
    if grid.num_errors or len(grid) != n or any(e != spec.epochs for e in epochs):
        raise RuntimeError(f"Tune run incomplete: {grid.num_errors} errors, epochs {epochs}")
    return wall


def toolbox_run(body: dict[str, Any], n: int) -> float:
    """Every configuration of the grid trained in turn by :func:`toolbox.train.train`."""
    import itertools

    import torch

    from toolbox.train import train
    from workers.spec import SweepSpec

    spec = SweepSpec.model_validate(body)
    keys = list(spec.parameters)
    combos = list(itertools.product(*(spec.parameters[k].grid_values() for k in keys)))
    assert len(combos) == n, (len(combos), n)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.max_concurrent * spec.resources_per_trial.cpu)))
    try:
        t0 = time.perf_counter()
        for combo in combos:
            result = train(spec.trial_config(dict(zip(keys, combo, strict=True))))
            assert result.outcome == "completed", result.message
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def ray_connection(settings: Any, token_file: Path) -> Iterator[None]:
    """This process joins the stack's Ray cluster, with its token, and leaves it after."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    import ray

    ray.init(address=settings.ray_address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def measure(args: argparse.Namespace, root: Path) -> Runs:
    """Start the stack, then run the three modes round-robin."""
    body, n = sweep_body(args.epochs, args.width, args.concurrency), 8
    runs = Runs()
    with (
        embedded_stack(root, args.warm_drivers) as stack,
        ray_connection(stack.settings, root / "ray" / "auth_token"),
    ):
        run_rounds(args, runs, stack.settings, body, n, root)
    return runs


def run_rounds(
    args: argparse.Namespace, runs: Runs, settings: Any, body: dict[str, Any], n: int, root: Path
) -> None:
    """One warm-up round and the measured ones, each running the three modes."""
    from service.cli.client import SweepsClient

    client = SweepsClient(settings.api_url, settings.api_token.get_secret_value())
    modes: dict[str, Callable[[], Any]] = {
        SERVICE: lambda: service_run(client, body, args.poll, n),
        TUNE: lambda: tune_run(body, root / "direct", n),
        TOOLBOX: lambda: toolbox_run(body, n),
    }
    meter = CpuMeter()
    for r in range(1 + args.rounds):
        label = "warm-up" if r == 0 else "measured"
        walls = {}
        for mode, run in modes.items():
            settle(client)
            meter.start()
            out = run()
            cpu = meter.stop()
            walls[mode] = out[0] if isinstance(out, tuple) else out
            if r > 0:
                runs.add(mode, walls[mode])
                runs.cpu.setdefault(mode, []).append(cpu)
                if isinstance(out, tuple):
                    runs.phases.append(out[1])
        print(f"round {r} ({label}): " + ", ".join(f"{v:.2f} s" for v in walls.values()))


def print_table(runs: Runs, n: int) -> None:
    """Median wall seconds per mode, the ratios and the service's overhead per trial."""
    a, b, c = (runs.median(m) for m in (SERVICE, TUNE, TOOLBOX))
    print(f"{'mode':30s} {'wall s (median)':>15s}  {'runs':>s}")
    for mode, values in runs.wall.items():
        shown = " ".join(f"{v:.2f}" for v in values)
        print(f"{mode:30s} {statistics.median(values):15.2f}  {shown}")
    per_trial = (a - b) / n
    ok_ab = "ok" if a / b <= A_B_TARGET else "MISSED"
    ok_pt = "ok" if per_trial < PER_TRIAL_TARGET_S else "MISSED"
    print(f"a/b (service / ray tune)       {a / b:15.3f}  target <= {A_B_TARGET} {ok_ab}")
    paired = [x / y for x, y in zip(runs.wall[SERVICE], runs.wall[TUNE], strict=True)]
    shown = " ".join(f"{r:.3f}" for r in paired)
    print(f"a/b round by round (median)    {statistics.median(paired):15.3f}  {shown}")
    print(f"a/c (service / toolbox)        {a / c:15.3f}")
    print(
        f"overhead per trial (a-b)/{n}    {per_trial:15.3f}  target < {PER_TRIAL_TARGET_S} {ok_pt}"
    )
    phases = {p: statistics.median(x[p] for x in runs.phases) for p in PHASES}
    print("service phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print("CPU seconds by process role (median over rounds):")
    for mode, samples in runs.cpu.items():
        roles = sorted({r for s in samples for r in s})
        medians = {r: statistics.median(s.get(r, 0.0) for s in samples) for r in roles}
        shown = ", ".join(f"{r} {v:.2f}" for r, v in sorted(medians.items(), key=lambda x: -x[1]))
        print(f"  {mode:28s} total {sum(medians.values()):6.2f}: {shown}")


def main() -> None:
    """Parse the options, run the benchmark, print the table; always stop the stack."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after 1 warm-up)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at a time")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.0,
        help="GET /sweeps/{id} every POLL s (default 0: long polls, answered at the end)",
    )
    parser.add_argument(
        "--warm-drivers", type=int, default=1, help="standby sweep jobs the API keeps (0: none)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the stack is stopped
    print(
        f"cpus={os.cpu_count()} load_average_1min={os.getloadavg()[0]:.2f} "
        f"trials=8 (grid 4 lr x 2 momentum) epochs={args.epochs} mlp width={args.width} depth=2 "
        f"concurrency={args.concurrency} cpu/trial=1 reuse_actors=True poll={args.poll} s "
        f"warm_drivers={args.warm_drivers} "
        f"rounds=1 warm-up + {args.rounds}"
    )
    root = Path(tempfile.mkdtemp(prefix="bsvc-", dir="/tmp"))  # short: Ray's socket paths
    start = time.perf_counter()
    try:
        runs = measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(runs, 8)
    print(f"total {time.perf_counter() - start:.0f} s, load_average_1min={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
