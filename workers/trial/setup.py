"""What every pack of a sweep shares, and each trial's configuration built from it.

Torch is imported inside the functions: the sweep's driver imports this module for
:class:`TrialSetup`, never trains, and would otherwise pay torch's import on every start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from toolbox.config import TrialConfig
from toolbox.errors import DataUnavailableError
from workers.spec import Scalar, expand_variant

log = logging.getLogger(__name__)
DATA_SETTINGS = (
    "(in a sweep, data.data_dir and data.download are the workers' deployment settings "
    "SWEEPS_DATA_DIR and SWEEPS_DATA_DOWNLOAD)"
)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares, built once by the driver.

    Attributes:
        base: the validated configuration before the trial's sampled parameters.
        metric: the sweep's metric, which every report must carry.
        mode: ``max`` or ``min``: which way the metric improves.
        cpus: the CPUs Ray gives each pack (its torch threads).
        gpus: the GPU share Ray gives each pack; above 0 it trains on CUDA.
        variants: the sweep's named variants (settings a trial's ``variant`` parameter picks).
    """

    base: TrialConfig
    metric: str
    mode: Literal["max", "min"]
    cpus: float
    gpus: float
    variants: Mapping[str, Mapping[str, Scalar]] = field(default_factory=dict)


def trial_config(setup: TrialSetup, params: dict[str, Any]) -> TrialConfig:
    """The trial's configuration: ``params`` on the base, on the device Ray gave the pack.

    Raises:
        pydantic.ValidationError: the combination is invalid (the trial fails with it).
    """
    import torch

    device = "cuda" if setup.gpus > 0 and torch.cuda.is_available() else "cpu"
    settings = expand_variant(params, setup.variants)
    return TrialConfig.from_flat({**settings, "device": device}, base=setup.base)


def validation_message(err: ValidationError) -> str:
    """``invalid configuration: optim.nesterov: ...``: where and what, first error first."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors()]
    return "invalid configuration: " + "; ".join(parts)


def samples_picture(cfg: TrialConfig) -> bytes:
    """The PNG of the trial's augmentation, or b"" when it cannot be made: it never fails a
    trial (a missing data set is reported by training)."""
    from toolbox.data import load_split
    from toolbox.train import resolve_device
    from workers.trial.samples import render_samples

    try:
        # The split training loads next (the same cached tensors), not a CPU copy of its own.
        return render_samples(cfg, load_split(cfg.data, resolve_device(cfg.device)))
    except DataUnavailableError:
        return b""
    except Exception:
        log.warning("cannot render the augmentation picture; the trial goes on", exc_info=True)
        return b""
