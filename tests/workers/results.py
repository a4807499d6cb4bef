"""Synthetic sweep results for the analysis, plot and summary tests: the metric is decided by
``model.norm`` (plus a small effect of the learning rate and noise from the seed)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import yaml

from workers.analysis import SweepResults, TrialResult, settings_of
from workers.sampling import draw
from workers.spec import SweepSpec, varied_keys

PARAMETERS: dict[str, Any] = {
    "model.norm": {"values": ["none", "batch", "layer"]},
    "optim.lr": {"values": [0.01, 0.1]},
    "seed": {"values": [0, 1, 2]},
    "model.width": {"value": 32},
}
LEVEL = {"none": 0.6, "batch": 0.9, "layer": 0.8}
"""The final accuracy of each norm at the learning rate 0.1 (0.01 costs 0.02)."""


def trial(number: int, norm: str, lr: float, seed: int, status: str = "completed") -> TrialResult:
    noise = 0.005 * (seed - 1)
    final = LEVEL[norm] - (0.02 if lr == 0.01 else 0.0) + noise
    curve = [
        (e, {"val_accuracy": final - 0.05 * (5 - e), "val_loss": 2.0 * math.exp(-e) + 0.1})
        for e in range(1, 6)
    ]
    params = {"model.norm": norm, "optim.lr": lr, "seed": seed}
    return TrialResult(number, f"norms #{number} norm={norm}", status, params, curve)


def results(extra: list[TrialResult] | None = None) -> SweepResults:
    """The full grid (18 trials, all completed), plus ``extra``."""
    trials = []
    for norm in LEVEL:
        for lr in (0.01, 0.1):
            for seed in (0, 1, 2):
                trials.append(trial(len(trials) + 1, norm, lr, seed))
    trials += extra or []
    return SweepResults("norms", "val_accuracy", "maximize", settings_of(PARAMETERS), trials)


def big_results(n: int = 120, epochs: int = 30) -> SweepResults:
    """A random search of ``n`` trials over a log-uniform learning rate and three norms."""
    rng = random.Random(0)
    params: dict[str, Any] = {
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 0.3},
        "model.norm": {"values": list(LEVEL)},
        "optim.batch_size": {"values": [8, 64, 512]},
    }
    trials = []
    for number in range(1, n + 1):
        p = {
            "optim.lr": math.exp(rng.uniform(math.log(1e-3), math.log(0.3))),
            "model.norm": rng.choice(list(LEVEL)),
            "optim.batch_size": rng.choice([8, 64, 512]),
        }
        status = "diverged" if number % 17 == 0 else "completed"
        level = LEVEL[p["model.norm"]]
        curve = [
            (e, {"val_accuracy": level * (1 - math.exp(-e / 5)) + rng.gauss(0, 0.01),
                 "val_loss": 2 * math.exp(-e / 5) + 0.1})
            for e in range(1, epochs + 1)
        ]  # fmt: skip
        trials.append(TrialResult(number, f"big #{number}", status, p, curve))
    return SweepResults("big", "val_accuracy", "maximize", settings_of(params), trials)


def tour_results(n: int = 24, epochs: int = 10) -> SweepResults:
    """The toolbox tour's parameters (examples/toolbox-tour.yaml: every toolbox setting, long
    names, narrow and wide log ranges), ``n`` trials drawn by the sweep's own sampler, with a
    made-up curve that rises with the learning rate."""
    tour = Path(__file__).parents[2] / "examples" / "toolbox-tour.yaml"
    spec = SweepSpec.model_validate({**yaml.safe_load(tour.read_text()), "max_trials": n})
    stored = spec.model_dump(mode="json")["parameters"]
    trials = []
    for number in range(1, n + 1):
        params = draw(spec, number)
        level = 0.5 + 2.0 * float(params["optim.lr"])
        curve = [
            (e, {"val_accuracy": min(0.99, level * (1 - math.exp(-e / 3))),
                 "val_loss": 2 * math.exp(-e / 3) + 0.05})
            for e in range(1, epochs + 1)
        ]  # fmt: skip
        status = "diverged" if number == n else "completed"
        # the service's run names: the settings that set the trial apart
        varied = " ".join(
            f"{k.rsplit('.', 1)[-1]}={f'{v:.3g}' if isinstance(v, float) else v}"
            for k, v in params.items()
            if k in varied_keys(spec.parameters)
        )
        name = f"toolbox-tour #{number} {varied}"
        trials.append(TrialResult(number, name, status, params, curve))
    return SweepResults("toolbox-tour", "val_accuracy", "maximize", settings_of(stored), trials)
