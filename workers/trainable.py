"""The function Ray Tune runs for every trial: train one configuration, report every epoch.

Each epoch is reported with a checkpoint, so Tune's failure handling (``max_failures``) restarts
a trial whose worker died from its last epoch instead of from scratch.

A diverged trial (NaN or infinite loss) is a normal outcome, not an error: it reports one last
result with ``diverged=True`` and the metric set to :func:`worst_value`, a finite number no
real result can beat, and returns. Tune's searchers and schedulers then rank it last, and the
JSON that Tune and the sink carry never holds a NaN or an infinity.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from toolbox.config import TrialConfig
from workers.spec import SweepSpec

if TYPE_CHECKING:
    from toolbox.train import EpochMetrics

# torch (and toolbox.train, which needs it) is imported inside the functions that train: the
# sweep's driver imports this module for run_trial and the result keys below, never trains, and
# would otherwise pay torch's import (seconds) on every job's start-up.

CHECKPOINT_FILE = "trial_state.pt"
DIVERGED = "diverged"
"""Result key: True on the last result of a diverged trial."""
EPOCH = "epoch"
PID = "pid"
"""Result key: the worker process id (tests kill it to exercise recovery)."""
WORST = 1e30
"""Magnitude of the stand-in metric of a diverged trial; finite, and beyond any real value."""


def worst_value(mode: str) -> float:
    """The metric value that ranks a trial last when the search ``mode`` is max or min."""
    return -WORST if mode == "max" else WORST


def run_trial(params: dict[str, Any], *, spec_json: str, cpus: float, gpus: float) -> None:
    """Train one trial of the sweep ``spec_json`` with the sampled ``params``.

    Ray Tune calls this with the trial's config; ``spec_json``, ``cpus`` and ``gpus`` are bound
    by ``tune.with_parameters`` in the driver.
    """
    import torch

    from toolbox.train import train

    spec = SweepSpec.model_validate_json(spec_json)
    cfg = _place(spec.trial_config(params), gpus)
    torch.set_num_threads(max(1, int(cpus)))  # the trial's CPU share, not the whole machine
    state = _load_checkpoint()

    def on_epoch(metrics: EpochMetrics, checkpoint: Any) -> None:
        report: dict[str, Any] = {**_finite(metrics.as_dict()), EPOCH: metrics.epoch}
        if spec.metric.name not in report:  # NaN or infinite: Tune needs the metric every time
            raise _Diverged(
                metrics.epoch, f"{spec.metric.name} is not finite at epoch {metrics.epoch}"
            )
        with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as tmp:
            torch.save(checkpoint(), Path(tmp, CHECKPOINT_FILE))
            # report() copies the directory to the run's storage before returning.
            tune.report(
                {**report, PID: os.getpid()}, checkpoint=tune.Checkpoint.from_directory(tmp)
            )

    try:
        result = train(cfg, on_epoch=on_epoch, resume=state)
    except _Diverged as err:
        _report_diverged(spec, epoch=err.epoch, message=str(err))
        return
    if result.outcome == "diverged":
        last = result.history[-1].epoch if result.history else 0
        _report_diverged(spec, epoch=last + 1, message=result.message)


class _Diverged(Exception):
    """Raised from ``on_epoch`` to stop a trial whose metric stopped being finite."""

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


def _report_diverged(spec: SweepSpec, epoch: int, message: str) -> None:
    """The last result of a diverged trial: flagged, with a metric that ranks it last."""
    tune.report(
        {
            spec.metric.name: worst_value(spec.metric.mode),
            EPOCH: epoch,
            PID: os.getpid(),
            DIVERGED: True,
            "message": message or "diverged",
        }
    )


def _place(cfg: TrialConfig, gpus: float) -> TrialConfig:
    """Pin the device to what Ray gave the trial: CUDA when it holds a GPU share."""
    import torch

    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    return TrialConfig.from_flat({"device": device}, base=cfg)


def _load_checkpoint() -> dict[str, Any] | None:
    import torch

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        # Our own file, written by on_epoch above; it holds optimizer and RNG state too.
        state: dict[str, Any] = torch.load(Path(path, CHECKPOINT_FILE), weights_only=False)
    return state


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
