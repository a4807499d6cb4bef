"""Benchmark: a 120-trial study through the service with packs, without, and its ideal.

The study (issue 16's): digits, an MLP 64x2, 5 learning rates x 3 seeds x 8 settings
(momentum 0/0.9, dropout 0/0.25, weight decay 0/1e-4), a grid of 120 trials of ``--epochs``
epochs, 1 CPU per trial, 2 at a time. Three modes in one run, on one embedded stack
(:func:`bench_service_overhead.embedded_stack`: real API, Ray head, MLflow server):

- ``packed``: ``POST /sweeps`` as a user sends it (packing on, the default), waited on with
  long polls until final; wall time from the POST.
- ``unpacked``: the same body with ``packing: {enabled: false}``: packs of one, one Tune
  trial per configuration.
- ``sequential``: :func:`toolbox.train.train` for every configuration, one after another in
  this process on ONE thread: the summed single-trial compute. The ideal on the sweep's slots
  is that divided by the slots (``max_concurrent``).

Targets (issue 16, 2 CPU cores): packed <= 2x the ideal; unpacked / packed >= 3. The pack size
probe runs once per stack before the first packed sweep (its cache then serves the rest); the
first packed run is reported apart as ``packed (cold probe)``. Modes alternate round by round.
Run: ``python bench/bench_packs_service.py [--rounds R] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_service_overhead import FINAL, LONG_POLL_S, embedded_stack, settle
from cpu_meter import CpuMeter

TIMEOUT_S = 1800
IDEAL_TARGET, SPEEDUP_TARGET = 2.0, 3.0


def study_body(epochs: int, packed: bool) -> dict[str, Any]:
    """The 120-trial grid."""
    return {
        "name": "bench-packs" if packed else "bench-unpacked",
        "dataset": "digits",
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "epochs": epochs,
        "method": "grid",
        "parameters": {
            "optim.lr": [0.01, 0.02, 0.05, 0.1, 0.2],
            "seed": [0, 1, 2],
            "optim.momentum": [0.0, 0.9],
            "model.dropout": [0.0, 0.25],
            "optim.weight_decay": [0.0, 1e-4],
        },
        "max_concurrent": 2,
        "resources_per_trial": {"cpu": 1},
        "packing": {"enabled": packed},
    }


def service_run(client: Any, body: dict[str, Any]) -> float:
    """POST the sweep and wait until it is final; wall seconds. Every trial must complete."""
    t0 = time.perf_counter()
    sweep = client.submit(body)
    while sweep["status"] not in FINAL:
        if time.perf_counter() - t0 > TIMEOUT_S:
            raise RuntimeError(f"sweep {sweep['id']} not final after {TIMEOUT_S} s")
        sweep = client.get(sweep["id"], wait=LONG_POLL_S)
    wall = time.perf_counter() - t0
    done = sweep["trial_counts"].get("completed", 0)
    if sweep["status"] != "completed" or done != 120:
        raise RuntimeError(f"sweep {sweep['id']}: {sweep['status']}, {done} completed")
    return wall


def sequential_run(body: dict[str, Any]) -> float:
    """Every configuration trained in turn on one thread: the summed single-trial compute."""
    import torch

    from toolbox.train import train
    from workers import sampling
    from workers.spec import SweepSpec

    spec = SweepSpec.model_validate(body)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        for trial in sampling.batch(spec, 0, []):  # a grid: every trial in one batch
            assert train(spec.trial_config(trial.params)).outcome == "completed"
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    from service.cli.client import SweepsClient

    walls: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    meter = CpuMeter()
    with tempfile.TemporaryDirectory(prefix="bench-packs-") as tmp:
        root = Path(tmp)
        with embedded_stack(root, warm_drivers=1) as stack:
            settings = stack.settings
            client = SweepsClient(settings.api_url, settings.api_token.get_secret_value())
            packed, unpacked = study_body(args.epochs, True), study_body(args.epochs, False)
            settle(client)
            walls["packed (cold probe)"] = [service_run(client, packed)]
            print(f"packed, cold probe: {walls['packed (cold probe)'][0]:.1f} s", flush=True)
            for r in range(args.rounds):
                for mode, run in (
                    ("packed", lambda: service_run(client, packed)),
                    ("unpacked", lambda: service_run(client, unpacked)),
                    ("sequential (1 thread)", lambda: sequential_run(packed)),
                ):
                    settle(client)
                    meter.start()
                    walls.setdefault(mode, []).append(run())
                    cpu[mode] = meter.stop()  # the last round's
                    print(f"round {r + 1}: {mode} {walls[mode][-1]:.1f} s", flush=True)
    report(walls, slots=2)
    print("CPU seconds by process role (last round; every process of this user counts):")
    for mode, roles in cpu.items():
        shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(roles.items(), key=lambda x: -x[1]))
        print(f"  {mode:26s} total {sum(roles.values()):6.1f}: {shown}")


def report(walls: dict[str, list[float]], slots: int) -> None:
    med = {mode: statistics.median(v) for mode, v in walls.items()}
    ideal = med["sequential (1 thread)"] / slots
    print(f"\n{'mode':28s} {'wall s (median)':>15s}  runs")
    for mode, values in walls.items():
        print(f"{mode:28s} {med[mode]:15.1f}  {' '.join(f'{v:.1f}' for v in values)}")
    print(f"{'ideal (sequential / ' + str(slots) + ')':28s} {ideal:15.1f}")
    over = med["packed"] / ideal
    speedup = med["unpacked"] / med["packed"]
    ok_over = "ok" if over <= IDEAL_TARGET else "MISSED"
    ok_speedup = "ok" if speedup >= SPEEDUP_TARGET else "MISSED"
    print(f"packed / ideal              {over:15.2f}  target <= {IDEAL_TARGET} {ok_over}")
    print(f"unpacked / packed           {speedup:15.2f}  target >= {SPEEDUP_TARGET} {ok_speedup}")


if __name__ == "__main__":
    main()
