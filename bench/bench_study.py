"""Benchmark: a user's study, four grid sweeps submitted at once, cold and warm, against its ideal.

The study (issue 21): 120 digits MLP trials (64x2) in four sweeps of 30, each a learning rate x
seed grid: plain SGD (10 epochs), momentum against Nesterov (10 epochs), batch norm on and off
(10 epochs), batch size 8, 64 and 512 (5 epochs); 1 CPU a trial, 2 slots (``max_concurrent``
2 each, on a 2-CPU stack). The four ``POST /sweeps`` go out together on a freshly started
embedded stack (``cold``: the first sweep of each shape pays the pack-size probe), then again on
the same stack (``warm``). Wall time runs from the first POST until every sweep is final.

Baselines, measured in the same run on ONE thread with the data loaded once:

- ``sequential``: :func:`toolbox.train.train` for every configuration in turn; the ideal on
  the study's slots is that / 2.
- ``packed ideal``: each sweep's trials of one pack shape (:func:`toolbox.packing.pack_key`)
  trained as one pack by :func:`toolbox.packed.train_pack`, summed, / 2.

Targets (2 CPU cores): cold <= 1.5x the ideal, warm <= 1.2x. Where the time goes, per sweep
(medians over the four), from the API's timestamps: submitted to started (dispatch and job
start), started to first trial (driver start, probe, first pack), first trial to last trial
ended (training, reporting, checkpoints), and ended to MLflow complete (``mlflow_pending`` 0).
Run: ``python bench/bench_study.py [--rounds 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_service_overhead import FINAL, LONG_POLL_S, embedded_stack, settle

TIMEOUT_S = 1800
SLOTS = 2
COLD_TARGET, WARM_TARGET = 1.5, 1.2
LRS = [0.01, 0.03, 0.1]
SEEDS = list(range(5))


def study() -> list[dict[str, Any]]:
    """The four sweeps, 30 trials each."""
    base = {
        "dataset": "digits",
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "method": "grid",
        "max_concurrent": SLOTS,
        "resources_per_trial": {"cpu": 1},
    }
    return [
        {**base, "name": "study-plain", "epochs": 10,
         "parameters": {"optim.lr": [0.01, 0.03, 0.1, 0.3, 1.0], "seed": list(range(6))}},
        {**base, "name": "study-momentum", "epochs": 10,
         "parameters": {"optim.lr": [0.003, 0.01, 0.03], "seed": SEEDS},
         "variants": {"momentum": {"optim.momentum": 0.9},
                      "nesterov": {"optim.momentum": 0.9, "optim.nesterov": True}}},
        {**base, "name": "study-batch-norm", "epochs": 10,
         "parameters": {"model.norm": ["none", "batch"], "optim.lr": LRS, "seed": SEEDS}},
        {**base, "name": "study-batch-size", "epochs": 5,
         "parameters": {"optim.batch_size": [8, 64, 512], "optim.lr": [0.03, 0.3],
                        "seed": SEEDS}},
    ]  # fmt: skip


def configs(body: dict[str, Any]) -> list[Any]:
    """A sweep's trial configurations, as its driver draws them."""
    from workers import sampling
    from workers.spec import SweepSpec

    spec = SweepSpec.model_validate(body)
    return [
        spec.trial_config(t.params)
        for i in range(sampling.batch_count(spec))
        for t in sampling.batch(spec, i, [])
    ]


def baselines(bodies: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(sequential seconds, packed seconds, pack shapes), one thread, data loaded once."""
    import torch

    from toolbox.data import load_split
    from toolbox.packed import train_pack
    from toolbox.packing import pack_key
    from toolbox.train import train

    torch.set_num_threads(1)
    trials = [c for body in bodies for c in configs(body)]
    data = load_split(trials[0].data)
    t0 = time.perf_counter()
    for config in trials:
        train(config, data=data)
    sequential = time.perf_counter() - t0
    packs: dict[tuple[str, Any], list[Any]] = {}
    for body in bodies:
        for config in configs(body):
            packs.setdefault((body["name"], pack_key(config)), []).append(config)
    t0 = time.perf_counter()
    for members in packs.values():
        train_pack(members, data=data)
    return sequential, time.perf_counter() - t0, len(packs)


def _at(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def run_study(client: Any, bodies: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """Submit every sweep at once, wait until all are final and in MLflow: (wall seconds from
    the first POST to the last sweep final, median seconds per phase)."""
    t0 = time.perf_counter()
    ids = [int(client.submit(body)["id"]) for body in bodies]
    final: dict[int, dict[str, Any]] = {}
    tracked: dict[int, float] = {}
    ended_at: dict[int, float] = {}

    def follow(sweep_id: int) -> None:
        sweep = client.get(sweep_id)
        while sweep["status"] not in FINAL or sweep.get("mlflow_pending"):
            if time.perf_counter() - t0 > TIMEOUT_S:
                raise RuntimeError(f"sweep {sweep_id} not done after {TIMEOUT_S} s")
            if sweep["status"] in FINAL and sweep_id not in ended_at:
                ended_at[sweep_id] = time.perf_counter()
            sweep = client.get(sweep_id, wait=LONG_POLL_S, version=sweep["version"])
        ended_at.setdefault(sweep_id, time.perf_counter())
        tracked[sweep_id] = time.perf_counter()
        final[sweep_id] = sweep

    threads = [threading.Thread(target=follow, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(ended_at.values()) - t0
    phases: dict[str, list[float]] = {}
    for sweep_id, sweep in final.items():
        done = sweep["trial_counts"].get("completed", 0)
        if sweep["status"] != "completed" or done != sweep["planned_trials"]:
            raise RuntimeError(f"sweep {sweep_id}: {sweep['status']}, {done} completed")
        trials = client.trials(sweep_id)["data"]
        first = min(_at(t["created_at"]) for t in trials)
        last = max(_at(t["ended_at"]) for t in trials)
        spans = {
            "submitted to started": _at(sweep["started_at"]) - _at(sweep["created_at"]),
            "started to first trial": first - _at(sweep["started_at"]),
            "first trial to last ended": last - first,
            "ended to MLflow complete": tracked[sweep_id] - ended_at[sweep_id],
            "first POST to final": ended_at[sweep_id] - t0,
        }
        for name, seconds in spans.items():
            phases.setdefault(name, []).append(seconds)
    return wall, {name: statistics.median(v) for name, v in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="warm rounds after the cold one")
    args = parser.parse_args()
    from service.cli.client import SweepsClient

    bodies = study()
    sequential, packed, shapes = baselines(bodies)
    ideal, packed_ideal = sequential / SLOTS, packed / SLOTS
    print(f"sequential {sequential:.1f} s (ideal on {SLOTS} slots {ideal:.1f} s); packed "
          f"{packed:.1f} s in {shapes} packs (ideal {packed_ideal:.1f} s)", flush=True)  # fmt: skip
    rows: list[tuple[str, float, dict[str, float]]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-study-") as tmp,
        embedded_stack(Path(tmp), warm_drivers=None) as stack,  # as `sweeps up` starts it
    ):
        settings = stack.settings
        client = SweepsClient(settings.api_url, settings.api_token.get_secret_value())
        settle(client)
        for label in ["cold"] + [f"warm {r + 1}" for r in range(args.rounds)]:
            wall, phases = run_study(client, bodies)
            rows.append((label, wall, phases))
            print(f"{label}: {wall:.1f} s", flush=True)
            settle(client)
    print(f"\n{'run':8s} {'wall s':>7s} {'/ ideal':>8s} {'/ packed ideal':>15s}  target")
    for label, wall, _ in rows:
        target = COLD_TARGET if label == "cold" else WARM_TARGET
        ok = "ok" if wall / ideal <= target else "MISSED"
        print(f"{label:8s} {wall:7.1f} {wall / ideal:8.2f} {wall / packed_ideal:15.2f}  "
              f"<= {target} {ok}")  # fmt: skip
    print("\nwhere the time goes (median over the four sweeps, seconds):")
    names = list(rows[0][2])
    print(f"{'phase':28s} " + " ".join(f"{label:>8s}" for label, _, _ in rows))
    for name in names:
        print(f"{name:28s} " + " ".join(f"{p[name]:8.1f}" for _, _, p in rows))


if __name__ == "__main__":
    main()
