"""Dropout and DropConnect: rate, both scaling rules, identity in eval and at p=0, and the
lecture's claim that either rule keeps the expected output."""

import pytest
import torch
from torch import nn

from toolbox.config import DropoutRule
from toolbox.dropout import RULES, DropConnectLinear, Dropout, dropout


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


P = 0.4


def test_weight_scaling_trains_unscaled_and_scales_by_one_minus_p_at_test() -> None:
    torch.manual_seed(0)
    x = torch.ones(200, 500)
    y = Dropout(P, rule="weight_scaling").train()(x)
    assert abs((y == 0).float().mean().item() - P) < 0.01
    assert torch.allclose(y[y != 0], torch.ones(()))  # kept units pass unscaled
    assert torch.allclose(dropout(x, P, training=False, rule="weight_scaling"), x * (1 - P))
    layer = DropConnectLinear(10, 5, p=P, rule="weight_scaling").eval()
    z = torch.randn(4, 10)
    expected = torch.nn.functional.linear(z, layer.weight * (1 - P), layer.bias)
    assert torch.allclose(layer(z), expected)


def _net(kind: str, rule: DropoutRule) -> tuple[nn.Module, nn.Linear]:
    """20 inputs -> 3 outputs, dropping the inputs (dropout) or the weights (DropConnect), and
    its linear layer (whose weights are the dropped units' outgoing ones); seeded weights."""
    torch.manual_seed(1)
    if kind == "dropout":
        linear = nn.Linear(20, 3)
        return nn.Sequential(Dropout(P, rule=rule), linear), linear
    linear = DropConnectLinear(20, 3, p=P, rule=rule)
    return linear, linear


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["dropout", "dropconnect"])
def test_averaged_over_masks_training_output_is_the_test_output(kind: str, rule: str) -> None:
    """The lecture's claim, for each rule: a unit's expected output in training (over the random
    masks) is what it outputs at test, where every unit is kept and scaled by the rule. The
    mean of 4000 masked forward passes must lie within 5 standard errors of the eval output."""
    net, _ = _net(kind, rule)  # type: ignore[arg-type]
    x = torch.randn(2, 20)
    torch.manual_seed(2)
    with torch.no_grad():
        masked = torch.stack([net.train()(x) for _ in range(4000)])  # (masks, 2, 3)
        at_test = net.eval()(x)
    standard_error = masked.std(dim=0) / 4000**0.5
    assert torch.all((masked.mean(dim=0) - at_test).abs() <= 5 * standard_error)


@pytest.mark.parametrize("kind", ["dropout", "dropconnect"])
def test_the_rules_are_one_model_up_to_the_scale_of_outgoing_weights(kind: str) -> None:
    """Weights w under the inverted rule compute exactly what weights w / (1 - p) compute under
    weight scaling: in training (for the same masks) and at test. So the rules differ only in
    where the 1 / (1 - p) lives, not in what the network can learn or predict."""
    inverted, _ = _net(kind, "inverted")
    scaled, scaled_linear = _net(kind, "weight_scaling")  # the same (seeded) initial weights
    with torch.no_grad():
        scaled_linear.weight /= 1 - P
    x = torch.randn(8, 20)
    for mode in ("train", "eval"):
        torch.manual_seed(3)
        a = getattr(inverted, mode)()(x)
        torch.manual_seed(3)
        b = getattr(scaled, mode)()(x)
        assert torch.allclose(a, b, atol=1e-6), mode


def test_an_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="rule"):
        Dropout(0.5, rule="sometimes")  # type: ignore[arg-type]
