"""A batch of trials as packs: grouped by what must be equal, cut to the pack size.

:class:`PackPlanner` groups a batch's trials (:mod:`workers.sampling`) by
``toolbox.packing.pack_key`` and cuts each group into near-equal packs: every slot gets a pack
before packs grow, and none holds more than the sweep's cap (``packing.max_members``; 1 with
``packing.enabled: false``) or, without one, the size probed for that shape
(:mod:`workers.driver.probing`). The slots counted are those free when the batch is planned:
on a cluster that other sweeps keep busy, a sweep trains in fewer, larger packs (each pack is a
Ray worker to start: seconds of CPU, more than a small pack trains), and still runs as many at
once as its own slots allow when the cluster frees up. A trial the toolbox refuses (an invalid
combination of sampled values) is a pack of its own: it fails alone. Packing decides how trials
train together, never which trials there are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from toolbox.packing import pack_key
from workers.driver.probing import PackSizes
from workers.driver.resources import TrialResources
from workers.results import PlannedTrial
from workers.spec import SweepSpec

log = logging.getLogger(__name__)
PackKey = tuple[tuple[str, object], ...]


def group_trials(
    spec: SweepSpec, trials: list[PlannedTrial], device: str
) -> list[tuple[PackKey | None, list[PlannedTrial]]]:
    """Trials grouped by pack key in order of first appearance; invalid ones alone (None)."""
    groups: dict[PackKey, list[PlannedTrial]] = {}
    alone: list[tuple[PackKey | None, list[PlannedTrial]]] = []
    for trial in trials:
        try:
            cfg = spec.trial_config(trial.params).model_copy(update={"device": device})
        except ValidationError:
            alone.append((None, [trial]))
            continue
        groups.setdefault(pack_key(cfg), []).append(trial)
    return [*groups.items(), *alone]


def cut(trials: list[PlannedTrial], size: int) -> list[list[PlannedTrial]]:
    """``trials`` in order, cut into near-equal packs of at most ``size`` (sizes differ by
    one at most)."""
    count = math.ceil(len(trials) / max(1, size))
    return [trials[i * len(trials) // count : (i + 1) * len(trials) // count] for i in range(count)]


def pack_size(group: int, slots: int, cap: int) -> int:
    """Trials per pack for a group of ``group`` trials: every slot gets a pack when the group
    allows, and no pack exceeds ``cap``."""
    return max(1, min(cap, math.ceil(group / max(1, slots))))


def slots(resources: TrialResources, cluster: dict[str, float], max_concurrent: int) -> int:
    """How many packs of ``resources`` run at once on ``cluster``."""
    if resources.gpu > 0:
        fit = math.floor(cluster.get("GPU", 0.0) / resources.gpu + 1e-9)
    else:
        fit = math.floor(cluster.get("CPU", 0.0) / resources.cpu + 1e-9)
    return max(1, min(max_concurrent, fit))


def cap(spec: SweepSpec) -> int | None:
    """The sweep's own cap on a pack's trials, or None to probe it."""
    return 1 if not spec.packing.enabled else spec.packing.max_members


class PackPlanner:
    """Cuts a sweep's batches of trials into packs (see the module docstring).

    Args:
        spec: the sweep.
        sizes: the probed pack sizes of the deployment.
        cluster: ``ray.cluster_resources()`` when the sweep started (sets the slots).
        available: the resources free now (``ray.available_resources``), asked once a batch.
    """

    def __init__(
        self,
        spec: SweepSpec,
        sizes: PackSizes,
        cluster: dict[str, Any],
        available: Callable[[], dict[str, Any]],
    ) -> None:
        self.spec, self.sizes, self.available = spec, sizes, available
        self.slots = slots(sizes.resources, cluster, spec.max_concurrent)
        self.device = "cuda" if sizes.resources.gpu > 0 else "cpu"

    def packs(self, trials: list[PlannedTrial]) -> list[list[PlannedTrial]]:
        """``trials`` as packs, over the slots free now."""
        free = self._free()
        packs: list[list[PlannedTrial]] = []
        for key, group in group_trials(self.spec, trials, self.device):
            packs += cut(group, 1 if key is None else self._size(key, group, free))
        if packs:
            lengths = sorted(len(p) for p in packs)
            log.info(
                "%d trials in %d packs of %d to %d trials (%d at once, %d free)",
                sum(lengths), len(packs), lengths[0], lengths[-1], self.slots, free,
            )  # fmt: skip
        return packs

    def _free(self) -> int:
        """The sweep's slots that the cluster has free now (at least one; all of them when
        Ray cannot say)."""
        try:
            now = self.available()
        except Exception:  # the plan only sizes packs: never fail a sweep over it
            log.warning("cannot read the cluster's free resources; packing for all slots")
            return self.slots
        return min(self.slots, slots(self.sizes.resources, now, self.spec.max_concurrent))

    def _size(self, key: PackKey, group: list[PlannedTrial], free: int) -> int:
        if len(group) <= free:
            return 1  # one trial per slot: nothing to probe
        limit = cap(self.spec) or self.sizes.size(key, group[0].params)
        return pack_size(len(group), free, limit)
