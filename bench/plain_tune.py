"""The baseline a plain Ray Tune user would write: one toolbox configuration per Tune trial.

Benchmarks that compare the service against Ray Tune run this, never the service's own trial
code, so the baseline stays what a careful Tune user would write by hand whatever the service
does: a function trainable that trains with :func:`toolbox.train.train`, sets torch's threads to
the trial's CPUs, reports every epoch's metrics with a checkpoint (``torch.save`` into a
temporary directory, :meth:`ray.tune.Checkpoint.from_directory`) and resumes from
:func:`ray.tune.get_checkpoint`; and a parameter space built from a sweep's parameters with
Tune's own domains (:func:`param_space`). Nothing here knows of databases, MLflow, packs,
divergence flags or invalid configurations: a trial that diverges stops reporting, one that
raises fails as Tune fails it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from toolbox.config import TrialConfig
from toolbox.metrics import EpochMetrics
from toolbox.train import Checkpoint, train
from workers.spec import (
    ChoiceParam,
    FixedParam,
    Parameter,
    RangeParam,
    Scalar,
    SweepSpec,
    expand_variant,
)

CHECKPOINT_FILE = "checkpoint.pt"


def train_one(
    params: dict[str, Any],
    *,
    base: TrialConfig,
    cpus: float,
    gpus: float,
    variants: Mapping[str, Mapping[str, Scalar]] | None = None,
) -> None:
    """Tune's function trainable: train ``base`` with the trial's ``params`` (dotted names)
    applied, reporting every epoch.

    Bind the keyword arguments with :func:`trainable`. A ``variant`` parameter picks one of
    ``variants`` (its settings replace it), as in a sweep specification.
    """
    torch.set_num_threads(max(1, int(cpus)))  # the trial's CPU share, not the machine's
    settings = expand_variant(params, variants or {})
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    cfg = TrialConfig.from_flat({**settings, "device": device}, base=base)

    def on_epoch(metrics: EpochMetrics, checkpoint: Checkpoint) -> None:
        measured = {k: v for k, v in metrics.as_dict().items() if v is not None}
        with tempfile.TemporaryDirectory(prefix="plain-tune-") as tmp:
            torch.save(checkpoint(), Path(tmp, CHECKPOINT_FILE))
            # report() copies the directory to the run's storage before it returns.
            tune.report(measured, checkpoint=tune.Checkpoint.from_directory(tmp))

    train(cfg, on_epoch=on_epoch, resume=_resume_state())


def trainable(
    base: TrialConfig,
    cpus: float,
    gpus: float,
    variants: Mapping[str, Mapping[str, Scalar]] | None = None,
) -> Any:
    """:func:`train_one` bound to ``base`` and asking Tune for ``cpus`` and ``gpus`` a trial."""
    bound = tune.with_parameters(train_one, base=base, cpus=cpus, gpus=gpus, variants=variants)
    return tune.with_resources(bound, {"cpu": cpus, "gpu": gpus})


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's parameter space of ``spec``'s parameters, keyed by their dotted names.

    A grid is ``tune.grid_search`` over each parameter's grid values (run it with
    ``num_samples=1``); a random or Bayesian sweep gets Tune's distributions, sampled by Tune
    or handed to a searcher such as ``OptunaSearch`` (run it with
    ``num_samples=spec.num_trials``). A fixed parameter is a constant either way.
    """
    domain = _grid_domain if spec.method == "grid" else _sampled_domain
    return {key: domain(p) for key, p in spec.parameters.items()}


def _grid_domain(p: Parameter) -> Any:
    if isinstance(p, FixedParam):
        return p.value
    return tune.grid_search(p.grid_values())


def _sampled_domain(p: Parameter) -> Any:
    if isinstance(p, FixedParam):
        return p.value
    if isinstance(p, ChoiceParam):
        return tune.choice(p.values)
    assert isinstance(p, RangeParam)
    if p.distribution == "uniform":
        return tune.uniform(p.min, p.max)
    if p.distribution == "log_uniform_values":
        return tune.loguniform(p.min, p.max)
    return tune.randint(int(p.min), int(p.max) + 1)  # randint's upper bound is exclusive


def _resume_state() -> dict[str, Any] | None:
    """The training state of Tune's last checkpoint of this trial, or None on a first start."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        state: dict[str, Any] = torch.load(Path(path, CHECKPOINT_FILE), weights_only=True)
    return state
