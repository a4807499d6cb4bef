"""How a sweep's trials are cut into packs (no Ray: the plan is pure)."""

from __future__ import annotations

from tests.workers.sweeps import digits_spec
from toolbox.packing import pack_key
from workers.driver.packs import configurations, pack_size, plan_packs, slots
from workers.driver.resources import TrialResources


def test_a_grid_lists_every_point_once_and_random_sampling_repeats_with_its_seed() -> None:
    grid = digits_spec({"optim.lr": [0.1, 0.2], "seed": [0, 1, 2]}, method="grid")
    points = configurations(grid)
    assert len(points) == 6
    assert {(p["optim.lr"], p["seed"]) for p in points} == {
        (lr, s) for lr in (0.1, 0.2) for s in (0, 1, 2)
    }
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 0.3}}
    first = configurations(digits_spec(params, max_trials=5, seed=7))
    assert first == configurations(digits_spec(params, max_trials=5, seed=7))
    assert first != configurations(digits_spec(params, max_trials=5, seed=8))
    assert all(1e-3 <= p["optim.lr"] <= 0.3 for p in first)


def test_packs_share_their_shape_and_are_near_equal() -> None:
    spec = digits_spec(
        {"optim.lr": [0.01, 0.02, 0.05, 0.1, 0.2], "optim.batch_size": [32, 64], "seed": [0, 1]},
        method="grid",
    )
    packs = plan_packs(spec, lambda _key, members: pack_size(len(members), slots=2, cap=4))
    assert sorted(m.number for p in packs for m in p) == list(range(1, 21))
    for pack in packs:
        keys = {pack_key(spec.trial_config(m.params)) for m in pack}
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
    packs = plan_packs(spec, lambda _key, members: len(members))
    bad = [p for p in packs if p[0].params["model.groups"] == 3]
    assert bad and all(len(p) == 1 for p in bad)
    good = [p for p in packs if p[0].params["model.groups"] == 4]
    assert len(good) == 1 and len(good[0]) == 12 - len(bad)  # dropout rates differ: one pack
