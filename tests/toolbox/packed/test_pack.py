"""Packs: what members must share, stopping and dropping members, unpacking and resuming."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from tests.toolbox.packed.test_equivalence import assert_same_curve, configs
from toolbox.errors import ConfigError
from toolbox.metrics import EpochMetrics
from toolbox.packed import Pack, StopMember, check_packable, pack_key, train_pack
from toolbox.train import train

CNN = {"model.arch": "cnn", "model.norm": "batch"}
MEMBERS = [
    {"model.dropout": 0.3, "model.dropout_conv": True, "optim.nesterov": True},
    {"optim.lr": 0.1, "augment.affine_p": 0.5, "augment.rotate_deg": 10.0},
    {"optim.momentum": 0.0, "model.dropout": 0.2, "model.dropconnect": True},
]


def test_members_must_share_the_shape_and_may_differ_elsewhere() -> None:
    cfgs = configs({"model.arch": "mlp"}, [{}, {"optim.lr": 0.2, "input_norm": "none"}])
    check_packable(cfgs)
    assert pack_key(cfgs[0]) == pack_key(cfgs[1])
    wider = configs({"model.arch": "mlp"}, [{}, {"model.width": 16}])
    assert pack_key(wider[0]) != pack_key(wider[1])
    with pytest.raises(ConfigError, match=r"member 1: model\.width=16 differs"):
        check_packable(wider)
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        check_packable(configs({}, [{}, {"optim.batch_size": 32}]))
    with pytest.raises(ConfigError, match="at least one member"):
        check_packable([])


def test_building_a_pack_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    pack = Pack(configs(CNN, MEMBERS))
    pack.checkpoint(1)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_stopped_member_is_dropped_and_its_packmates_go_on_unchanged() -> None:
    cfgs = configs(CNN, MEMBERS)
    reported: list[tuple[int, int]] = []
    sizes: list[int] = []

    def on_epoch(key: int, metrics: EpochMetrics, checkpoint: Any) -> None:
        reported.append((key, metrics.epoch))
        if key == 0:
            raise StopMember("asha: below the rung's median")

    pack = Pack(cfgs)
    while not pack.done:
        pack.run_epoch(on_epoch)
        sizes.append(len(pack.members))
    assert reported == [(0, 1), (1, 1), (2, 1), (1, 2), (2, 2)]
    assert sizes == [2, 0]
    stopped = pack.results[0]
    assert (stopped.outcome, stopped.message) == ("stopped", "asha: below the rung's median")
    assert len(stopped.history) == 1
    for key in (1, 2):
        assert pack.results[key].outcome == "completed"
        assert_same_curve(pack.results[key], train(cfgs[key]))


def test_a_member_masked_mid_epoch_stays_exactly_as_it_was() -> None:
    pack = Pack(configs(CNN, MEMBERS))
    at_stop: list[dict[str, Any]] = []
    forwards: list[bool] = []

    def stop_at_second_step(module: Any, inputs: Any, output: Any) -> None:
        forwards.append(module.training)
        if len(forwards) == 2:  # after the first step and this forward pass
            pack.stop(2)
            at_stop.append(pack.checkpoint(2))

    handle = pack.model.register_forward_hook(stop_at_second_step)
    pack.train_epoch(noise=None)  # an epoch's steps, without the end that drops members
    handle.remove()
    after = pack.checkpoint(2)
    for part in ("model", "optimizer", "rng"):
        assert_equal_nested(after[part], at_stop[0][part])
    pack.run_epoch()
    assert pack.results[2].outcome == "stopped" and pack.results[2].history == []
    assert [m.key for m in pack.members] == [0, 1]


def assert_equal_nested(a: Any, b: Any) -> None:
    """Equal dicts, lists and tensors (bit for bit), recursively."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_nested(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal_nested(x, y)
    else:
        assert a == b


def test_an_unpacked_member_resumes_alone_on_its_solo_curve() -> None:
    cfgs = configs(CNN, MEMBERS)
    saved: dict[int, bytes] = {}

    def save(key: int, metrics: EpochMetrics, checkpoint: Any) -> None:
        if metrics.epoch == 1:
            buffer = io.BytesIO()
            torch.save(checkpoint(), buffer)  # as a Ray worker would: serialized
            saved[key] = buffer.getvalue()

    packed = train_pack(cfgs, on_epoch=save)
    for key, config in enumerate(cfgs):
        ckpt = torch.load(io.BytesIO(saved[key]), weights_only=True)
        assert ckpt["epoch"] == 1
        resumed = train(config, resume=ckpt)
        assert [m.epoch for m in resumed.history] == [1, 2]
        assert_same_curve(packed[key], resumed)
        assert_same_curve(resumed, train(config))


def test_a_pack_resumes_from_single_trial_checkpoints() -> None:
    cfgs = configs(CNN, MEMBERS)
    first_epochs: dict[int, dict[str, Any]] = {}

    def keep(metrics: EpochMetrics, checkpoint: Any, key: int) -> None:
        if metrics.epoch == 1:
            first_epochs[key] = checkpoint()

    alone = [train(c, on_epoch=lambda m, ck, key=k: keep(m, ck, key)) for k, c in enumerate(cfgs)]
    resumed = train_pack(cfgs, resume=[first_epochs[k] for k in range(len(cfgs))])
    for result, solo in zip(resumed, alone, strict=True):
        assert [m.epoch for m in result.history] == [1, 2]
        assert_same_curve(result, solo)


def test_a_finished_checkpoint_needs_no_more_training() -> None:
    cfgs = configs({"model.arch": "mlp"}, [{}])
    last: list[dict[str, Any]] = []
    solo = train(cfgs[0], on_epoch=lambda m, checkpoint: last.append(checkpoint()))
    (result,) = train_pack(cfgs, resume=[last[-1]])
    assert result.outcome == "completed"
    assert result.history == solo.history


def test_each_member_measures_its_own_gradient_noise() -> None:
    shared = {"model.arch": "mlp", "model.norm": "layer"}
    cfgs = configs(
        shared, [{"measure_grad_noise": True}, {}, {"measure_grad_noise": True, "optim.lr": 0.1}]
    )
    results = train_pack(cfgs)
    assert all(m.grad_noise is None for m in results[1].history)
    for k in (0, 2):
        want = [m.grad_noise for m in train(cfgs[k]).history]
        got = [m.grad_noise for m in results[k].history]
        assert got == pytest.approx(want, rel=1e-3)


def test_members_with_fewer_epochs_finish_first_on_their_solo_curves() -> None:
    cfgs = configs({"model.arch": "mlp"}, [{"epochs": 1}, {"epochs": 3}, {"epochs": 2}])
    results = train_pack(cfgs)
    assert [len(r.history) for r in results] == [1, 3, 2]
    for result, config in zip(results, cfgs, strict=True):
        assert result.outcome == "completed"
        assert_same_curve(result, train(config))
