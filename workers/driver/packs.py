"""A sweep's trials as packs: its configurations, grouped by what must be equal, chunked.

Grid and random sweeps know every configuration up front: :func:`configurations` lists them
(a grid in full, random ones sampled from the sweep's seed, so the same specification gives
the same trials), :func:`plan_packs` groups them by ``toolbox.packing.pack_key`` and cuts each
group into packs of at most the pack size. Each pack becomes one Tune trial; each member keeps
its number (its position in :func:`configurations`), which names its trial everywhere.

A configuration the toolbox refuses (an invalid combination of sampled values) is a pack of
its own: it fails alone, as an unpacked trial would.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from ray import tune
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from toolbox.packing import pack_key
from workers.driver.pack_search import PackSearcher
from workers.driver.probing import PackSizes
from workers.driver.resources import TrialResources
from workers.driver.search import SearchPlan
from workers.packing import MEMBERS, PACK, Member
from workers.spec import ChoiceParam, FixedParam, Parameter, RangeParam, SweepSpec

log = logging.getLogger(__name__)
BAYES_ROUNDS = 4
"""A packed Bayesian sweep's batches per slot: fewer, larger packs learn less from results."""
PackKey = tuple[tuple[str, object], ...]


def configurations(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial's parameters: the whole grid, or ``num_trials`` seeded random samples."""
    keys = list(spec.parameters)
    if spec.method == "grid":
        values = [spec.parameters[k].grid_values() for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    rng = random.Random(spec.seed)
    return [{k: _sample(spec.parameters[k], rng) for k in keys} for _ in range(spec.num_trials)]


def _sample(p: Parameter, rng: random.Random) -> Any:
    if isinstance(p, FixedParam):
        return p.value
    if isinstance(p, ChoiceParam):
        return rng.choice(p.values)
    assert isinstance(p, RangeParam)
    if p.distribution == "uniform":
        return rng.uniform(p.min, p.max)
    if p.distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(p.min), math.log(p.max)))
    return rng.randint(int(p.min), int(p.max))


def group_configurations(
    spec: SweepSpec, configs: list[dict[str, Any]], device: str
) -> list[tuple[PackKey | None, list[Member]]]:
    """Members grouped by pack key in order of first appearance; invalid ones alone (None)."""
    groups: dict[PackKey, list[Member]] = {}
    alone: list[tuple[PackKey | None, list[Member]]] = []
    for i, params in enumerate(configs):
        member = Member(i + 1, params)
        try:
            cfg = spec.trial_config(params).model_copy(update={"device": device})
        except ValidationError:
            alone.append((None, [member]))
            continue
        groups.setdefault(pack_key(cfg), []).append(member)
    return [*groups.items(), *alone]


def plan_packs(
    spec: SweepSpec, size_for: Callable[[PackKey, list[Member]], int], device: str = "cpu"
) -> list[list[Member]]:
    """The sweep's packs: each group of equal keys cut into ``size_for(key, members)``
    members at most (near-equal packs, members in their order)."""
    packs: list[list[Member]] = []
    for key, members in group_configurations(spec, configurations(spec), device):
        size = 1 if key is None else max(1, size_for(key, members))
        count = math.ceil(len(members) / size)
        for i in range(count):  # sizes differ by one at most
            packs.append(members[i * len(members) // count : (i + 1) * len(members) // count])
    return packs


def pack_size(group: int, slots: int, cap: int) -> int:
    """Members per pack for a group of ``group`` trials: every slot gets a pack when the group
    allows, and no pack exceeds ``cap`` (the probe's, or the sweep's ``max_members``)."""
    return max(1, min(cap, math.ceil(group / max(1, slots))))


def uses_packs(spec: SweepSpec) -> bool:
    """Whether the sweep trains packs (its ``packing.enabled``)."""
    return spec.packing.enabled


def slots(resources: TrialResources, cluster: dict[str, float], max_concurrent: int) -> int:
    """How many trials (packs) of ``resources`` run at once on ``cluster``."""
    if resources.gpu > 0:
        fit = math.floor(cluster.get("GPU", 0.0) / resources.gpu + 1e-9)
    else:
        fit = math.floor(cluster.get("CPU", 0.0) / resources.cpu + 1e-9)
    return max(1, min(max_concurrent, fit))


def packed_plan(
    spec: SweepSpec, sizes: PackSizes, cluster: dict[str, float], sweep_uid: str
) -> SearchPlan:
    """Tune's plan for a packed sweep: one grid point per pack, run first in, first out (the
    packs stop their members themselves). A group's packs fill the slots first; none holds
    more than the sweep's ``packing.max_members`` or, without it, the probed size."""
    n_slots = slots(sizes.resources, cluster, spec.max_concurrent)
    fixed = spec.packing.max_members

    def cap_for(key: PackKey, members: list[Member]) -> int:
        return fixed or sizes.size(key, members)

    def size_for(key: PackKey, members: list[Member]) -> int:
        if len(members) <= n_slots:
            return 1  # one member per slot: nothing to probe
        return pack_size(len(members), n_slots, cap_for(key, members))

    device = "cuda" if sizes.resources.gpu > 0 else "cpu"
    if spec.method == "bayes":
        return _bayes_plan(spec, cap_for, device, n_slots, sweep_uid)
    packs = plan_packs(spec, size_for, device)
    lengths = sorted(len(p) for p in packs)
    log.info(
        "sweep %s: %d trials in %d packs of %d to %d members (%d at once)",
        sweep_uid, sum(lengths), len(packs), lengths[0], lengths[-1], n_slots,
    )  # fmt: skip
    points = [{MEMBERS: [m.as_config() for m in pack]} for pack in packs]
    return SearchPlan(
        param_space={PACK: tune.grid_search(points)},
        search_alg=BasicVariantGenerator(max_concurrent=spec.max_concurrent),
        scheduler=tune.schedulers.FIFOScheduler(),
        num_samples=1,
    )


def _bayes_plan(
    spec: SweepSpec,
    cap_for: Callable[[PackKey, list[Member]], int],
    device: str,
    n_slots: int,
    sweep_uid: str,
) -> SearchPlan:
    """Packs asked of Optuna a batch at a time; a batch small enough that the search still
    learns: each slot gets about :data:`BAYES_ROUNDS` batches in all."""
    size = math.ceil(spec.num_trials / (n_slots * BAYES_ROUNDS))
    if size > 1:  # the cap of the first drawn configuration's shape
        key, members = group_configurations(spec, configurations(spec)[:1], device)[0]
        size = min(size, 1 if key is None else cap_for(key, members))
    log.info("sweep %s: Bayesian search asks packs of %d members (%d at once)",
             sweep_uid, size, n_slots)  # fmt: skip
    searcher = PackSearcher(spec, size, device)
    return SearchPlan(
        param_space={},
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=n_slots),
        scheduler=tune.schedulers.FIFOScheduler(),
        num_samples=spec.num_trials,
    )
