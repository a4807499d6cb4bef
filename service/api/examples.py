"""Request examples shown in the OpenAPI docs (``/docs``)."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example

_SMALL: dict[str, Any] = {
    "name": "lr-momentum",
    "dataset": "digits",
    "epochs": 5,
    "method": "random",
    "max_trials": 8,
    "parameters": {
        "optim.lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.3},
        "optim.momentum": {"values": [0.0, 0.9]},
        "model.norm": {"values": ["none", "batch", "layer"]},
    },
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "early_stopping": {"type": "asha", "grace_period": 2},
}
_GRID: dict[str, Any] = {
    "name": "dropout-grid",
    "method": "grid",
    "epochs": 4,
    "parameters": {
        "model.dropout": [0.0, 0.2, 0.5],
        "optim.nesterov": [False, True],
        "optim.momentum": 0.9,
    },
}

SWEEP_EXAMPLES: dict[str, Example] = {
    "random": Example(summary="Random search with ASHA early stopping", value=_SMALL),
    "grid": Example(summary="A 6-point grid (lists are shorthand for values)", value=_GRID),
}
