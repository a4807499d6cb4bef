"""The function Ray Tune runs for every trial: train one configuration, report every epoch.

Each epoch is reported with a checkpoint, so Tune's failure handling (``max_failures``) restarts
a trial whose worker died from its last epoch instead of from scratch.

A diverged trial (NaN or infinite loss) is a normal outcome, not an error: it reports one last
result with ``diverged=True`` and the metric set to :func:`worst_value`, a finite number no
real result can beat, and returns. Tune's searchers and schedulers then rank it last, and the
JSON that Tune and the sink carry never holds a NaN or an infinity. A trial whose sampled
parameters make an invalid configuration, or whose data set is missing, reports the same way,
flagged ``invalid``, with the reason: it fails alone, at once, and is not retried.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from ray import tune

from toolbox.config import TrialConfig
from toolbox.errors import DataUnavailableError
from workers.events import finite_metrics
from workers.spec import Scalar, expand_variant

if TYPE_CHECKING:
    from toolbox.metrics import EpochMetrics

# torch (and toolbox.train, which needs it) is imported inside the functions that train: the
# sweep's driver imports this module for run_trial and the result keys below, never trains, and
# would otherwise pay torch's import (seconds) on every job's start-up.

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "trial_state.pt"
DIVERGED = "diverged"
"""Result key: True on the last result of a diverged trial."""
INVALID = "invalid"
"""Result key: True on the only result of a trial whose configuration is invalid."""
EPOCH = "epoch"
PID = "pid"
"""Result key: the worker process id (tests kill it to exercise recovery)."""
WORST = 1e30
"""Magnitude of the stand-in metric of a diverged trial; finite, and beyond any real value."""
SAMPLES = "augmented_samples"
"""Result key: the PNG of the trial's augmentation (:mod:`workers.trial.samples`), bytes, on the
first result after the trial's first start only (a resumed trial reported it before). The driver
takes it out of the result before Tune keeps it."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares, built once by the driver.

    Attributes:
        base: the validated configuration before the trial's sampled parameters.
        metric: the sweep's metric, which every report must carry.
        mode: ``max`` or ``min``: which way the metric improves.
        cpus: the CPUs Ray gives each trial (its torch threads).
        gpus: the GPU share Ray gives each trial; above 0 the trial trains on CUDA.
        variants: the sweep's named variants (settings a trial's ``variant`` parameter picks).
    """

    base: TrialConfig
    metric: str
    mode: Literal["max", "min"]
    cpus: float
    gpus: float
    variants: Mapping[str, Mapping[str, Scalar]] = field(default_factory=dict)


def worst_value(mode: str) -> float:
    """The metric value that ranks a trial last when the search ``mode`` is max or min."""
    return -WORST if mode == "max" else WORST


def trial_config(setup: TrialSetup, params: dict[str, Any]) -> TrialConfig:
    """The trial's configuration: ``params`` on the base, on the device Ray gave the trial.

    Raises:
        pydantic.ValidationError: the combination is invalid (the trial fails with it).
    """
    import torch

    device = "cuda" if setup.gpus > 0 and torch.cuda.is_available() else "cpu"
    settings = expand_variant(params, setup.variants)
    return TrialConfig.from_flat({**settings, "device": device}, base=setup.base)


def run_trial(params: dict[str, Any], *, setup: TrialSetup) -> None:
    """Train one trial with the sampled ``params``.

    Ray Tune calls this with the trial's config; ``setup`` is bound by ``tune.with_parameters``
    in the driver.
    """
    import torch

    from toolbox.train import train

    try:
        cfg = trial_config(setup, params)
    except ValidationError as err:
        _report_last(setup, epoch=0, flag=INVALID, message=_validation_message(err))
        return
    torch.set_num_threads(max(1, int(setup.cpus)))  # the trial's CPU share, not the machine
    state = _load_checkpoint()
    samples = _samples(cfg) if state is None else {}  # sent once, with the first result

    def on_epoch(metrics: EpochMetrics, checkpoint: Any) -> None:
        report: dict[str, Any] = {**finite_metrics(metrics.as_dict()), EPOCH: metrics.epoch}
        if setup.metric not in report:  # NaN or infinite: Tune needs the metric every time
            raise _Diverged(metrics.epoch, f"{setup.metric} is not finite at epoch {metrics.epoch}")
        with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as tmp:
            torch.save(checkpoint(), Path(tmp, CHECKPOINT_FILE))
            # report() copies the directory to the run's storage before returning.
            tune.report(
                {**report, PID: os.getpid(), **_take(samples)},
                checkpoint=tune.Checkpoint.from_directory(tmp),
            )

    try:
        result = train(cfg, on_epoch=on_epoch, resume=state)
    except _Diverged as err:
        _report_last(setup, err.epoch, DIVERGED, str(err), _take(samples))
        return
    except DataUnavailableError as err:  # retrying cannot help: fail alone, at once
        where = (
            "(in a sweep, data.data_dir and data.download are the workers' deployment settings "
            "SWEEPS_DATA_DIR and SWEEPS_DATA_DOWNLOAD)"
        )
        _report_last(setup, epoch=0, flag=INVALID, message=f"{err} {where}")
        return
    if result.outcome == "diverged":
        last = result.history[-1].epoch if result.history else 0
        _report_last(setup, last + 1, DIVERGED, result.message, _take(samples))


class _Diverged(Exception):
    """Raised from ``on_epoch`` to stop a trial whose metric stopped being finite."""

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


def _report_last(
    setup: TrialSetup, epoch: int, flag: str, message: str, extra: dict[str, Any] | None = None
) -> None:
    """The last result of a diverged or invalid trial: flagged, with a metric that ranks it
    last; ``extra`` entries go with it."""
    tune.report(
        {
            setup.metric: worst_value(setup.mode),
            EPOCH: epoch,
            PID: os.getpid(),
            flag: True,
            "message": message or flag,
            **(extra or {}),
        }
    )


def _samples(cfg: TrialConfig) -> dict[str, Any]:
    """``{SAMPLES: png}``, or nothing when the picture cannot be made: it never fails a trial."""
    from toolbox.data import load_split
    from toolbox.train import resolve_device
    from workers.trial.samples import render_samples

    try:
        # The split training loads next (the same cached tensors), not a CPU copy of its own.
        data = load_split(cfg.data, resolve_device(cfg.device))
        return {SAMPLES: render_samples(cfg, data)}
    except DataUnavailableError:
        return {}  # training reports it, as the trial's failure
    except Exception:
        log.warning("cannot render the augmentation picture; the trial goes on", exc_info=True)
        return {}


def _take(entries: dict[str, Any]) -> dict[str, Any]:
    """Everything in ``entries``, which is emptied: what is sent once goes with one result."""
    taken = dict(entries)
    entries.clear()
    return taken


def _validation_message(err: ValidationError) -> str:
    """``invalid configuration: optim.nesterov: ...``: where and what, first error first."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors()]
    return "invalid configuration: " + "; ".join(parts)


def _load_checkpoint() -> dict[str, Any] | None:
    import torch

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        # Our own file (on_epoch above): tensors, numbers and strings only, so it loads without
        # unpickling arbitrary objects; a checkpoint that needs more is refused, never run.
        state: dict[str, Any] = torch.load(Path(path, CHECKPOINT_FILE), weights_only=True)
    return state
