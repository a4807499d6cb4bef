"""The training loop: learning, seeding, resuming, divergence, evaluation mode, callbacks."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

import toolbox.train
from toolbox.config import TrialConfig
from toolbox.data import DataSplit, limit_train, load_split
from toolbox.errors import ConfigError
from toolbox.metrics import EpochMetrics
from toolbox.models import build_model
from toolbox.optim import build_optimizer
from toolbox.preprocess import InputNormalizer
from toolbox.train import TrainResult, train

CURVE = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")  # timings always vary


def _config(**overrides: Any) -> TrialConfig:
    base = {
        "model.arch": "mlp",
        "model.width": 32,
        "model.depth": 2,
        "optim.lr": 0.05,
        "optim.momentum": 0.9,
        "optim.batch_size": 64,
        "epochs": 3,
        "device": "cpu",
    }
    return TrialConfig.from_flat({**base, **overrides})


def _curve(result: TrainResult) -> list[tuple[float, ...]]:
    return [tuple(getattr(m, k) for k in CURVE) for m in result.history]


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.norm": "batch", "optim.nesterov": True},
        {"model.arch": "cnn", "model.norm": "batch", "optim.nesterov": True},
    ],
    ids=["mlp", "cnn"],
)
def test_models_learn_digits_within_a_few_epochs(overrides: dict[str, Any]) -> None:
    result = train(_config(epochs=4, **overrides))
    assert result.outcome == "completed"
    assert [m.epoch for m in result.history] == [1, 2, 3, 4]
    assert result.final is not None and result.final.val_accuracy >= 0.95
    assert result.final.samples_per_second > 0 and result.final.epoch_seconds > 0


def test_same_seed_gives_an_identical_curve() -> None:
    cfg = _config(epochs=2, **{"model.dropout": 0.3, "model.norm": "batch"})
    first = _curve(train(cfg))
    assert _curve(train(cfg)) == first
    assert _curve(train(cfg.model_copy(update={"seed": 1}))) != first


def test_resuming_a_mid_run_checkpoint_continues_the_same_curve() -> None:
    cfg = _config(
        epochs=4,
        **{
            "model.arch": "cnn",
            "model.norm": "batch",
            "model.dropout": 0.3,
            "model.dropout_conv": True,
            "optim.nesterov": True,
        },
    )
    saved: dict[int, bytes] = {}

    def save(metrics: EpochMetrics, checkpoint: Any) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint(), buffer)  # as the Ray worker does: serialized each epoch
        saved[metrics.epoch] = buffer.getvalue()

    full = train(cfg, on_epoch=save)
    ckpt = torch.load(io.BytesIO(saved[2]), weights_only=True)
    assert ckpt["epoch"] == 2
    resumed = train(cfg, resume=ckpt)
    assert resumed.outcome == "completed"
    assert [m.epoch for m in resumed.history] == [1, 2, 3, 4]
    assert _curve(resumed) == _curve(full)


def test_checkpoint_is_a_snapshot_unchanged_by_later_training() -> None:
    kept: list[dict[str, Any]] = []
    train(_config(epochs=2), on_epoch=lambda m, checkpoint: kept.append(checkpoint()))
    first, second = (c["model"]["1.weight"] for c in kept)
    assert not torch.equal(first, second)


def test_augmented_training_is_seeded_and_resumable() -> None:
    pytest.importorskip("toolbox.augment")
    cfg = _config(
        epochs=3,
        **{"augment.affine_p": 0.5, "augment.rotate_deg": 10.0, "augment.noise_std": 0.05},
    )
    checkpoints: list[dict[str, Any]] = []
    full = train(cfg, on_epoch=lambda m, checkpoint: checkpoints.append(checkpoint()))
    assert _curve(full) == _curve(train(cfg))
    assert _curve(train(cfg, resume=checkpoints[0])) == _curve(full)


def test_an_epoch_augments_batches_ahead_and_steps_through_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(toolbox.train, "AUGMENT_AHEAD", 100)  # 3 batches of 32 per call
    split = _tiny_split(n_train=250, n_val=10)
    cfg = _config(**{"optim.batch_size": 32})
    model = build_model(cfg.model, split.in_shape, split.num_classes)
    steps: list[int] = []
    model.register_forward_pre_hook(lambda module, inputs: steps.append(len(inputs[0])))
    augmented: list[torch.Tensor] = []

    def augment(x: torch.Tensor, generator: Any = None, inplace: bool = False) -> torch.Tensor:
        augmented.append(x.clone())
        return x

    toolbox.train.train_epoch(
        model, build_optimizer(model, cfg.optim), split, InputNormalizer("none"), augment,
        torch.Generator().manual_seed(0), 32,
    )  # fmt: skip
    assert [len(x) for x in augmented] == [96, 96, 58]
    assert steps == [32] * 7 + [26]
    seen = torch.cat(augmented).flatten(1)  # every training sample once, in shuffled order
    assert torch.equal(seen.sort(dim=0).values, split.train_x.flatten(1).sort(dim=0).values)


def test_augmenting_ahead_keeps_the_batches_of_the_shuffled_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(toolbox.train, "AUGMENT_AHEAD", 100)
    split = _tiny_split(n_train=250, n_val=10)
    cfg = _config(**{"optim.batch_size": 32})

    def epoch_sums(augment: Any) -> list[float]:
        torch.manual_seed(0)
        model = build_model(cfg.model, split.in_shape, split.num_classes)
        sums = toolbox.train.train_epoch(
            model, build_optimizer(model, cfg.optim), split, InputNormalizer("none"), augment,
            torch.Generator().manual_seed(0), 32,
        )  # fmt: skip
        return [s.item() for s in sums]

    identity = epoch_sums(lambda x, generator=None, inplace=False: x)  # gathered 96 at a time
    assert identity == pytest.approx(epoch_sums(None), rel=1e-5)  # gathered one batch at a time


def test_huge_learning_rate_diverges_without_raising() -> None:
    reported: list[EpochMetrics] = []
    # With lr * weight_decay far above 2 * (1 + momentum) the decay term alone makes the weights
    # grow geometrically, so the loss overflows whether or not the ReLUs die first (lr=10 alone
    # sometimes just kills every unit and leaves a finite loss).
    cfg = _config(epochs=3, **{"optim.lr": 10.0, "optim.weight_decay": 1.0})
    result = train(cfg, on_epoch=lambda m, checkpoint: reported.append(m))
    assert result.outcome == "diverged"
    assert "epoch 1" in result.message
    assert result.history == reported == []


def test_callback_exceptions_stop_training() -> None:
    class Stop(Exception):
        pass

    def stop_after_first(metrics: EpochMetrics, checkpoint: Any) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(_config(epochs=3), on_epoch=stop_after_first)


def test_evaluation_runs_in_eval_mode_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bool, bool, int]] = []  # (training, grad enabled, batch size)

    def build_and_watch(*args: Any) -> torch.nn.Module:
        model = build_model(*args)
        model.register_forward_pre_hook(
            lambda module, inputs: calls.append(
                (module.training, torch.is_grad_enabled(), len(inputs[0]))
            )
        )
        return model

    monkeypatch.setattr(toolbox.train, "build_model", build_and_watch)
    cfg = _config(epochs=1, **{"model.norm": "batch", "model.dropout": 0.5, "optim.batch_size": 32})
    train(cfg, data=_tiny_split(n_train=40, n_val=30))
    assert calls[:-1] == [(True, True, 32), (True, True, 8)]  # batch_size 32, drop_last=False
    assert calls[-1] == (False, False, 30)  # one large batch for the whole validation split


def test_a_prepared_split_is_used_as_given() -> None:
    split = _tiny_split(n_train=50, n_val=20, classes=3)
    checkpoints: list[dict[str, Any]] = []
    cfg = _config(epochs=1, **{"model.arch": "cnn"})
    result = train(cfg, data=split, on_epoch=lambda m, checkpoint: checkpoints.append(checkpoint()))
    assert result.outcome == "completed"
    head = list(checkpoints[0]["model"].values())[-1]
    assert head.shape == (3,)  # classifier bias: the split's class count
    mean = checkpoints[0]["normalizer"]["mean"]
    assert torch.allclose(mean.flatten(), split.train_x.mean(dim=(0, 2, 3)))


def test_best_and_final_pick_epochs() -> None:
    history = [
        EpochMetrics(i, 1.0, 0.5, loss, acc, 1.0, 10.0)
        for i, (loss, acc) in enumerate([(0.9, 0.7), (0.5, 0.9), (0.6, 0.8)], start=1)
    ]
    result = TrainResult("completed", history)
    assert result.final is history[-1]
    assert result.best() is history[1]
    assert result.best("val_loss", mode="min") is history[1]
    assert TrainResult("diverged").best() is None
    assert history[0].as_dict()["val_accuracy"] == 0.7


def _tiny_split(n_train: int, n_val: int, classes: int = 10) -> DataSplit:
    generator = torch.Generator().manual_seed(0)
    return DataSplit(
        train_x=torch.rand(n_train, 1, 8, 8, generator=generator),
        train_y=torch.randint(0, classes, (n_train,), generator=generator),
        val_x=torch.rand(n_val, 1, 8, 8, generator=generator),
        val_y=torch.randint(0, classes, (n_val,), generator=generator),
        num_classes=classes,
        name="tiny",
    )


def test_train_size_applies_to_a_prepared_split_too() -> None:
    cfg = _config(epochs=1, **{"data.train_size": 50})
    whole = load_split(cfg.data.model_copy(update={"train_size": None}))
    from_whole = train(cfg, data=whole).history[0]
    assert _curve(TrainResult("completed", [from_whole])) == _curve(train(cfg))
    with pytest.raises(ConfigError, match=r"data\.train_size=50 .*\(40 samples\)"):
        train(cfg, data=limit_train(whole, 40))
