"""What one trial asks Ray for, defaulted from the cluster when the sweep leaves it open."""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.spec import SweepSpec

GPU_SHARES = (1.0, 0.5, 0.25, 0.2, 0.125, 0.1)
"""Fractions of one GPU a trial may get by default: each packs a whole number of trials."""


@dataclass(frozen=True)
class TrialResources:
    """CPUs and GPUs of one trial (``gpu`` may be a fraction: trials share a GPU)."""

    cpu: float
    gpu: float

    def as_tune(self) -> dict[str, float]:
        """The resource request in ``tune.with_resources``' form."""
        return {"cpu": self.cpu, "gpu": self.gpu}


def trial_resources(spec: SweepSpec, cluster: dict[str, float]) -> TrialResources:
    """Resources of one trial of ``spec`` on a cluster with ``cluster`` resources.

    Args:
        spec: the sweep; an explicit ``resources_per_trial.gpu`` always wins.
        cluster: ``ray.cluster_resources()`` (keys ``CPU``, ``GPU``).

    Returns:
        The request. When the sweep leaves ``gpu`` open and the cluster has GPUs, trials get the
        largest share in :data:`GPU_SHARES` that lets ``max_concurrent`` of them fit at once;
        without GPUs they get none.
    """
    requested = spec.resources_per_trial
    if requested.gpu is not None:
        return TrialResources(cpu=requested.cpu, gpu=requested.gpu)
    return TrialResources(cpu=requested.cpu, gpu=default_gpu_share(cluster, spec.max_concurrent))


def default_gpu_share(cluster: dict[str, float], max_concurrent: int) -> float:
    """The GPU share of one trial so ``max_concurrent`` trials fit the cluster's GPUs."""
    gpus = math.floor(cluster.get("GPU", 0.0))
    if gpus < 1:
        return 0.0
    wanted = gpus / max_concurrent
    return next((s for s in GPU_SHARES if s <= wanted), GPU_SHARES[-1])
