"""``toolbox-train CONFIG``: train one trial from a YAML or JSON file and print its curve.

Exit status: 0 when training completed, 1 when it diverged or the data is unavailable, 2 when
the configuration is invalid (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from toolbox.config import TrialConfig, flatten_dict
from toolbox.errors import SweepsError
from toolbox.metrics import EpochMetrics
from toolbox.train import TrainResult, resolve_device, train

COLUMNS = (
    ("epoch", "epoch", 0),
    ("train_loss", "train_loss", 4),
    ("train_acc", "train_accuracy", 4),
    ("val_loss", "val_loss", 4),
    ("val_acc", "val_accuracy", 4),
    ("seconds", "epoch_seconds", 2),
    ("samples/s", "samples_per_second", 0),
    ("grad_noise", "grad_noise", 4),
)
"""(header, EpochMetrics field, decimals) of each printed column; an unmeasured metric
(``None``) prints as ``-``."""


def load_config(path: Path, overrides: Sequence[str] = ()) -> TrialConfig:
    """Read a nested YAML or JSON trial config and apply ``section.name=value`` overrides.

    Raises:
        OSError: the file cannot be read.
        yaml.YAMLError, json.JSONDecodeError: the file does not parse.
        pydantic.ValidationError: a setting is invalid (the error names it).
        ValueError: a malformed override or a file that is not a mapping.
    """
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return TrialConfig.from_flat({**flatten_dict(raw), **parse_overrides(overrides)})


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "epochs=2"]`` into ``{"optim.lr": 0.1, "epochs": 2}``.

    Values are parsed as YAML scalars, so numbers and booleans get their types.
    """
    parsed: dict[str, Any] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"override {item!r} must look like section.name=value")
        parsed[name.strip()] = yaml.safe_load(value)
    return parsed


def print_header(out: TextIO) -> None:
    """Print the column headers of the per-epoch table."""
    print("  ".join(f"{header:>10}" for header, _, _ in COLUMNS), file=out)


def print_epoch(metrics: EpochMetrics, out: TextIO) -> None:
    """Print one row of the per-epoch table."""
    print("  ".join(_cell(getattr(metrics, f), d) for _, f, d in COLUMNS), file=out, flush=True)


def _cell(value: float | None, decimals: int) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.{decimals}f}"


def print_outcome(result: TrainResult, out: TextIO) -> None:
    """Print how training ended and the best validation accuracy."""
    best = result.best("val_accuracy")
    summary = f"{result.outcome}: {len(result.history)} epoch(s)"
    if best is not None:
        summary += f", best val_accuracy {best.val_accuracy:.4f} at epoch {best.epoch}"
    if result.message:
        summary += f"; {result.message}"
    print(summary, file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="toolbox-train", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="trial config, YAML or JSON (nested sections)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting by dotted name, e.g. --set epochs=2 --set optim.lr=0.1",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValidationError is a ValueError
        kind = "invalid config" if isinstance(exc, ValidationError) else "cannot read config"
        print(f"{kind} {args.config}:\n{exc}", file=sys.stderr)
        return 2
    print(
        f"training {config.model.arch} on {config.data.dataset} for {config.epochs} epoch(s), "
        f"device={resolve_device(config.device)}, seed={config.seed}"
    )
    print_header(sys.stdout)
    try:
        result = train(config, on_epoch=lambda metrics, _: print_epoch(metrics, sys.stdout))
    except SweepsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_outcome(result, sys.stdout)
    return 0 if result.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
