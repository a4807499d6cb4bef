"""A member trained in a pack gives the curve of the same config and seed trained alone."""

from __future__ import annotations

from typing import Any

import pytest

from toolbox.config import TrialConfig
from toolbox.packed import Pack, train_pack
from toolbox.train import TrainResult, train

LOSS_REL = 1e-5  # float rounding of the packed kernels (seen: up to 2e-7 over two epochs)
ACCURACY_ABS = 3e-3  # one sample of 360 validation images may flip on rounding (seen: none)

BASE = {
    "model.width": 8,
    "model.depth": 2,
    "model.fc_width": 16,
    "optim.batch_size": 64,
    "data.train_size": 512,
    "epochs": 2,
    "device": "cpu",
}

# Each case: the pack's shared settings, then three members' own settings.
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "mlp-plain-sgd": (
        {"model.arch": "mlp"},
        [
            {"optim.momentum": 0.0, "optim.lr": 0.1},
            {"optim.momentum": 0.9, "optim.nesterov": True, "optim.lr": 0.02},
            {"optim.momentum": 0.5, "optim.weight_decay": 0.01, "optim.lr": 0.05},
        ],
    ),
    "mlp-batch-dropout": (
        {"model.arch": "mlp", "model.norm": "batch"},
        [
            {"model.dropout": 0.3},
            {"model.dropout": 0.2, "model.dropout_rule": "weight_scaling"},
            {"model.dropout": 0.0, "input_norm": "symmetric"},
        ],
    ),
    "mlp-layer-dropconnect": (
        {"model.arch": "mlp", "model.norm": "layer", "model.activation": "tanh"},
        [
            {"model.dropout": 0.3, "model.dropconnect": True},
            {"model.dropout": 0.2, "model.dropconnect": True,
             "model.dropout_rule": "weight_scaling"},
            {"model.dropout": 0.1, "input_norm": "per_instance"},
        ],
    ),
    "mlp-group": (
        # Groups of 8 features: groups of 2 make the norm's gradient so ill-conditioned that
        # rounding alone moves a curve by 1e-4 in a step.
        {"model.arch": "mlp", "model.width": 16, "model.norm": "group", "model.groups": 2},
        [{"optim.lr": 0.1}, {"optim.weight_decay": 0.05}, {"input_norm": "unit"}],
    ),
    "cnn-batch-channel-dropout": (
        {"model.arch": "cnn", "model.norm": "batch"},
        [
            {"model.dropout": 0.2, "model.dropout_conv": True},
            {"model.dropout": 0.3, "model.dropout_conv": True,
             "model.dropout_rule": "weight_scaling"},
            {"model.dropout": 0.2, "model.dropconnect": True, "optim.nesterov": True},
        ],
    ),
    "cnn-instance": (
        {"model.arch": "cnn", "model.norm": "instance", "model.activation": "sigmoid"},
        [{"optim.lr": 0.2}, {"optim.momentum": 0.0}, {"optim.weight_decay": 0.01}],
    ),
    "cnn-group-layer": (
        {"model.arch": "cnn", "model.norm": "group", "model.groups": 2},
        [{"seed": 3}, {"optim.lr": 0.1, "seed": 4}, {"input_norm": "none"}],
    ),
    "cnn-layer": (
        {"model.arch": "cnn", "model.norm": "layer"},
        [{"optim.lr": 0.1}, {"optim.nesterov": True}, {"model.dropout": 0.4}],
    ),
    "augmentation": (
        {"model.arch": "mlp", "model.norm": "batch"},
        [
            {"augment.hflip_p": 0.5, "augment.affine_p": 0.5, "augment.rotate_deg": 15.0,
             "augment.translate": 0.1, "augment.scale": 0.1, "augment.shear_deg": 5.0},
            {"augment.color_p": 0.8, "augment.brightness": 0.3, "augment.contrast": 0.3,
             "augment.invert_p": 0.2, "augment.noise_std": 0.05},
            {},  # no augmentation in a pack that gathers batches ahead for the others
        ],
    ),
}  # fmt: skip


def configs(shared: dict[str, Any], own: list[dict[str, Any]]) -> list[TrialConfig]:
    """The members: seeds 0, 1, 2 unless set, the pack's settings over :data:`BASE`."""
    return [
        TrialConfig.from_flat({**BASE, "seed": i, **shared, **settings})
        for i, settings in enumerate(own)
    ]


def assert_same_curve(packed: Any, alone: TrainResult) -> None:
    """Equal epochs, losses within :data:`LOSS_REL`, accuracies within :data:`ACCURACY_ABS`."""
    assert len(packed.history) == len(alone.history)
    for got, want in zip(packed.history, alone.history, strict=True):
        for name in ("train_loss", "val_loss"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=LOSS_REL), name
        for name in ("train_accuracy", "val_accuracy"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), abs=ACCURACY_ABS)


@pytest.mark.parametrize("case", list(CASES))
def test_a_member_in_a_pack_follows_its_solo_curve(case: str) -> None:
    cfgs = configs(*CASES[case])
    for config, result in zip(cfgs, train_pack(cfgs), strict=True):
        assert result.outcome == "completed"
        assert_same_curve(result, train(config))


def test_a_diverging_member_never_disturbs_its_packmates() -> None:
    shared = {"model.arch": "cnn", "model.norm": "batch", "epochs": 3}
    # lr * weight_decay far above 2 (1 + momentum): the weights grow geometrically (NaN).
    cfgs = configs(shared, [{}, {"optim.lr": 10.0, "optim.weight_decay": 1.0}, {"seed": 7}])
    results = train_pack(cfgs)
    alone = train(cfgs[1])
    assert results[1].outcome == alone.outcome == "diverged"
    assert results[1].message.split(":")[0] == alone.message.split(":")[0]  # the same epoch
    assert len(results[1].history) == len(alone.history) < 3
    for k in (0, 2):
        assert results[k].outcome == "completed"
        assert_same_curve(results[k], train(cfgs[k]))


@pytest.mark.parametrize(
    "case", ["cnn-batch-channel-dropout", "cnn-instance", "cnn-group-layer", "cnn-layer"]
)
def test_grouped_conv_maps_follow_the_solo_curve_too(case: str) -> None:
    """The layout CUDA uses by default (one grouped kernel over K*C channels), on the CPU."""
    cfgs = configs(*CASES[case])
    pack = Pack(cfgs)
    pack.model.grouped = True
    while not pack.done:
        pack.run_epoch()
    for key, config in enumerate(cfgs):
        assert pack.results[key].outcome == "completed"
        assert_same_curve(pack.results[key], train(config))
