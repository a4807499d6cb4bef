"""SGD from the config: momentum and Nesterov steps by hand, and weight-decay exemptions."""

import torch
from torch import nn

from toolbox.config import OptimConfig
from toolbox.optim import build_optimizer, param_groups

A = torch.tensor([1.0, 3.0])  # f(w) = 0.5 * sum(A * w^2), so grad = A * w
W0 = torch.tensor([1.0, -2.0])


def _run(cfg: OptimConfig, steps: int) -> torch.Tensor:
    model = nn.Module()
    model.w = nn.Parameter(W0.clone())
    opt = build_optimizer(model, cfg)
    for _ in range(steps):
        (0.5 * (A * model.w**2).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.w.detach()


def _by_hand(lr: float, alpha: float, nesterov: bool, steps: int) -> torch.Tensor:
    w, v = W0.clone(), torch.zeros(2)
    for _ in range(steps):
        g = A * w
        v = alpha * v + g
        w = w - lr * (g + alpha * v if nesterov else v)
    return w


def test_nesterov_matches_the_formula_over_two_steps() -> None:
    cfg = OptimConfig(lr=0.1, momentum=0.9, nesterov=True)
    for steps in (1, 2):
        assert torch.allclose(_run(cfg, steps), _by_hand(0.1, 0.9, True, steps))


def test_momentum_matches_the_formula_and_differs_from_nesterov() -> None:
    cfg = OptimConfig(lr=0.1, momentum=0.9, nesterov=False)
    plain = _run(cfg, 2)
    assert torch.allclose(plain, _by_hand(0.1, 0.9, False, 2))
    assert not torch.allclose(plain, _run(OptimConfig(lr=0.1, momentum=0.9, nesterov=True), 2))


def test_zero_momentum_is_plain_sgd() -> None:
    expected = W0 - 0.1 * A * W0
    assert torch.allclose(_run(OptimConfig(lr=0.1, momentum=0.0), 1), expected)


def test_weight_decay_skips_biases_and_norm_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Conv2d(3, 2, 3))
    decayed, exempt = param_groups(model, 0.01)
    assert decayed["weight_decay"] == 0.01 and exempt["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2, 4}  # Linear weight, conv kernel
    assert len(exempt["params"]) == 4  # Linear bias, BN gamma and beta, conv bias


def test_weight_decay_shrinks_weights_without_gradient() -> None:
    layer = nn.Linear(2, 2)
    before_w, before_b = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = build_optimizer(layer, OptimConfig(lr=0.1, momentum=0.0, weight_decay=0.5))
    (layer.weight.sum() * 0 + layer.bias.sum() * 0).backward()  # zero gradients
    opt.step()
    assert torch.allclose(layer.weight, before_w * (1 - 0.1 * 0.5))
    assert torch.equal(layer.bias.detach(), before_b)
