"""The grad_noise metric: the running-sum estimate, its absence when off, and its fall with the
batch size on digits."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from toolbox.config import TrialConfig
from toolbox.grad_noise import GradNoise
from toolbox.train import train


def test_the_running_sums_give_the_spread_of_the_gradients_around_their_mean() -> None:
    weight, bias = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    frozen = nn.Parameter(torch.zeros(3), requires_grad=False)  # no gradient, not counted
    noise = GradNoise([weight, bias, frozen])
    batches = [torch.randn(6) for _ in range(5)]  # one flattened gradient per batch
    for g in batches:
        weight.grad, bias.grad = g[:4].view(2, 2), g[4:]
        noise.add()
    g = torch.stack(batches)  # (B, 6)
    expected = ((g - g.mean(dim=0)) ** 2).sum(dim=1).sum() / (len(batches) - 1)
    value = noise.value()
    assert value is not None and noise.batches == 5
    assert value.item() == pytest.approx(math.sqrt(expected.item()), rel=1e-5)


def test_one_batch_has_no_spread_to_measure() -> None:
    param = nn.Parameter(torch.zeros(3))
    noise = GradNoise([param])
    assert noise.value() is None
    param.grad = torch.ones(3)
    noise.add()
    assert noise.value() is None


def _config(**overrides: Any) -> TrialConfig:
    base = {"model.arch": "mlp", "model.width": 32, "epochs": 1, "device": "cpu"}
    return TrialConfig.from_flat({**base, **overrides})


def test_grad_noise_is_measured_only_when_asked() -> None:
    off = train(_config()).history[0]
    assert off.grad_noise is None and off.as_dict()["grad_noise"] is None
    on = train(_config(measure_grad_noise=True)).history[0]
    assert on.grad_noise is not None and math.isfinite(on.grad_noise) and on.grad_noise > 0
    # Measuring reads the gradients and changes nothing of the training itself.
    assert (on.train_loss, on.val_loss) == (off.train_loss, off.val_loss)


@pytest.mark.parametrize(
    "model", [{"model.arch": "mlp"}, {"model.arch": "cnn", "model.width": 8}], ids=["mlp", "cnn"]
)
def test_grad_noise_falls_like_one_over_the_square_root_of_the_batch_size(
    model: dict[str, Any],
) -> None:
    """One epoch on digits at batch sizes 8, 64 and 512, with a learning rate so small that the
    weights stay at their (seeded, identical) initialization, so every batch size measures the
    same gradients. Asserted: the noise falls strictly with the batch size, and the ratio of
    batch 8's noise to batch 512's lies within a factor of 2 of sqrt(512 / 8) = 8, i.e. in
    [4, 16] (measured: about 6 to 8; sampling without replacement and the smaller last batch
    pull it off 8 in opposite directions)."""
    noise = {}
    for batch in (8, 64, 512):
        cfg = _config(
            **model, measure_grad_noise=True, **{"optim.batch_size": batch, "optim.lr": 1e-6}
        )
        noise[batch] = train(cfg).history[0].grad_noise
    assert noise[8] is not None and noise[64] is not None and noise[512] is not None
    assert noise[8] > noise[64] > noise[512]
    assert 4.0 <= noise[8] / noise[512] <= 16.0
