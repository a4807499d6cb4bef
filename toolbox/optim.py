"""Minibatch SGD with (Nesterov) momentum and weight decay, built from an :class:`OptimConfig`.

Weight decay applies to the weight matrices and conv kernels only. Biases and the gamma and beta
of normalization layers are exempt: they do not grow with the model's capacity to overfit, and
decaying gamma toward 0 fights the normalization (with batch norm the following layer is
invariant to the scale of its input, so decaying it only changes the effective learning rate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolbox.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and an exempt group.

    Parameters with two or more dimensions (Linear weights, conv kernels) are decayed; vectors
    (biases, normalization gamma and beta) are not.

    Returns:
        Parameter groups for a ``torch.optim`` optimizer; empty groups are left out.
    """
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else exempt).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """Build SGD for ``model`` from ``cfg``.

    torch's formulation, with gradient g (including weight decay), momentum alpha, lr epsilon:
    ``v = alpha * v + g``; standard momentum steps ``w -= epsilon * v``, Nesterov steps
    ``w -= epsilon * (g + alpha * v)``. This equals the textbook ``v = alpha v - epsilon g``
    form while the learning rate is constant.

    Args:
        model: the network whose parameters to optimize.
        cfg: learning rate, momentum, Nesterov, weight decay.

    Returns:
        The optimizer.
    """
    return torch.optim.SGD(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
