"""How a batch of trials is cut into packs (no Ray: the plan is pure)."""

from __future__ import annotations

from tests.workers.sweeps import digits_spec
from toolbox.packing import pack_key
from workers import sampling
from workers.driver.planning import cut, group_trials, pack_size, slots
from workers.driver.resources import TrialResources, default_gpu_share, trial_resources
from workers.results import PlannedTrial


def packs_of(spec, size) -> list[list[PlannedTrial]]:
    packs: list[list[PlannedTrial]] = []
    for key, group in group_trials(spec, sampling.batch(spec, 0, []), "cpu"):
        packs += cut(group, 1 if key is None else size(group))
    return packs


def test_packs_share_their_shape_and_are_near_equal() -> None:
    spec = digits_spec(
        {"optim.lr": [0.01, 0.02, 0.05, 0.1, 0.2], "optim.batch_size": [32, 64], "seed": [0, 1]},
        method="grid",
    )
    packs = packs_of(spec, lambda group: pack_size(len(group), slots=2, cap=4))
    assert sorted(t.number for p in packs for t in p) == list(range(1, 21))
    for pack in packs:
        keys = {pack_key(spec.trial_config(t.params)) for t in pack}
        assert len(keys) == 1  # never two batch sizes in one pack
        assert len(pack) in (3, 4)
    assert len(packs) == 6  # 10 per batch size, at most 4 each: 4+3+3 twice


def test_pack_size_fills_every_slot_before_growing() -> None:
    assert pack_size(120, slots=2, cap=8) == 8
    assert pack_size(6, slots=2, cap=8) == 3
    assert pack_size(1, slots=4, cap=8) == 1
    assert pack_size(40, slots=1, cap=64) == 40
    cpu = TrialResources(cpu=1.0, gpu=0.0)
    assert slots(cpu, {"CPU": 2.0}, max_concurrent=4) == 2
    assert slots(cpu, {"CPU": 16.0}, max_concurrent=4) == 4
    assert slots(TrialResources(cpu=1.0, gpu=0.5), {"CPU": 16.0, "GPU": 1.0}, 8) == 2


def test_an_invalid_combination_is_a_pack_of_its_own() -> None:
    # Past the spec's corner check (as in test_sweep): groups=3 is refused only when drawn.
    params = {
        "model.norm": "group",
        "model.groups": [3, 4],
        "model.dropout": [i / 4000 for i in range(1000)],
        "model.dropconnect": [False, True],
    }
    spec = digits_spec(params, method="random", max_trials=12, seed=3)
    packs = packs_of(spec, len)
    bad = [p for p in packs if p[0].params["model.groups"] == 3]
    assert bad and all(len(p) == 1 for p in bad)
    good = [p for p in packs if p[0].params["model.groups"] == 4]
    assert len(good) == 1 and len(good[0]) == 12 - len(bad)  # dropout rates differ: one pack


def test_gpu_share_packs_max_concurrent_trials_per_gpu() -> None:
    assert default_gpu_share({"CPU": 8}, max_concurrent=4) == 0.0
    assert default_gpu_share({"GPU": 1}, max_concurrent=1) == 1.0
    assert default_gpu_share({"GPU": 1}, max_concurrent=4) == 0.25
    assert default_gpu_share({"GPU": 1}, max_concurrent=3) == 0.25
    assert default_gpu_share({"GPU": 2}, max_concurrent=4) == 0.5
    assert default_gpu_share({"GPU": 8}, max_concurrent=4) == 1.0
    explicit = digits_spec({"optim.lr": [0.1]}, resources_per_trial={"cpu": 2, "gpu": 0})
    assert trial_resources(explicit, {"GPU": 4}).gpu == 0.0
