"""Dropout and DropConnect: rate, inverted scaling, identity in eval and at p=0."""

import pytest
import torch

from toolbox.dropout import DropConnectLinear, Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drops_about_p_and_scales_kept_units(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(200, 500)
    y = Dropout(p).train()(x)
    assert y.shape == x.shape
    assert abs((y == 0).float().mean().item() - p) < 0.01
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1.0 / (1.0 - p)))


def test_dropout_is_identity_in_eval_and_at_p_zero() -> None:
    x = torch.randn(16, 32)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(dropout(x, 0.5, training=False), x)


def test_dropout_is_seeded() -> None:
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5, training=True))


def test_channel_dropout_drops_whole_channels() -> None:
    torch.manual_seed(0)
    x = torch.ones(100, 40, 4, 4)  # (B, C, H, W)
    y = Dropout(0.3, channel=True).train()(x)
    per_channel = y.view(100, 40, 16)
    dropped = (per_channel == 0).all(dim=2)
    kept = (per_channel == 1 / 0.7).all(dim=2)
    assert torch.all(dropped | kept)  # never part of a channel
    assert abs(dropped.float().mean().item() - 0.3) < 0.02


def test_drop_connect_drops_about_p_of_the_weights_with_inverted_scaling() -> None:
    torch.manual_seed(0)
    layer = DropConnectLinear(300, 200, p=0.4).train()
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    eye = torch.eye(300)  # row i of the output is column i of the effective weight
    effective = layer(eye).T  # (out, in)
    assert abs((effective == 0).float().mean().item() - 0.4) < 0.01
    kept = effective[effective != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.6))


def test_drop_connect_uses_all_weights_in_eval() -> None:
    torch.manual_seed(0)
    layer = DropConnectLinear(10, 5, p=0.5).eval()
    x = torch.randn(4, 10)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_drop_connect_shares_one_mask_across_the_batch() -> None:
    torch.manual_seed(0)
    layer = DropConnectLinear(8, 8, p=0.5).train()
    x = torch.ones(1, 8).expand(4, 8)  # identical rows
    y = layer(x)
    assert torch.equal(y, y[:1].expand_as(y))


def test_modules_describe_themselves() -> None:
    assert "p=0.25" in repr(Dropout(0.25, channel=True))
    assert "p=0.25" in repr(DropConnectLinear(3, 2, p=0.25))
    assert "in_features=3" in repr(DropConnectLinear(3, 2, p=0.25))


def test_invalid_probability_is_rejected() -> None:
    with pytest.raises(ValueError):
        Dropout(1.0)
