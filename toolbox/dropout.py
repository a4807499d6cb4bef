"""Dropout of activations and DropConnect of weights, both with inverted scaling.

In training every kept unit (or weight) is scaled by 1 / (1 - p), so the expected value is
unchanged and evaluation simply uses every unit and weight without rescaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool, *, channel: bool = False) -> torch.Tensor:
    """Zero each unit of ``x`` with probability ``p`` and scale the rest by 1 / (1 - p).

    Args:
        x: activations, (B, F) or (B, C, H, W).
        p: drop probability in [0, 1).
        training: drop only in training; otherwise ``x`` is returned unchanged.
        channel: drop whole channels of a (B, C, H, W) map (spatial dropout), because
            neighbouring pixels are so correlated that dropping single pixels barely regularizes.

    Returns:
        A tensor shaped like ``x``.
    """
    if not training or p == 0.0:
        return x
    # torch's fused kernels implement exactly this Bernoulli mask with inverted scaling;
    # they draw from the default generator of x's device, seeded by torch.manual_seed.
    return F.dropout2d(x, p, training=True) if channel else F.dropout(x, p, training=True)


def drop_connect_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float, training: bool
) -> torch.Tensor:
    """A linear layer whose weights are each dropped with probability ``p`` in training.

    One weight mask is drawn per call (per minibatch), not per sample: per-sample masks would
    need a (B, out, in) weight tensor. The bias is kept, as in Wan et al. (2013).

    Args:
        x: (B, in) inputs.
        weight: (out, in) weights.
        bias: (out,) bias or ``None``.
        p: drop probability in [0, 1).
        training: drop only in training; evaluation uses all weights unscaled.

    Returns:
        (B, out) outputs.
    """
    if training and p > 0.0:
        weight = F.dropout(weight, p, training=True)  # Bernoulli mask times 1 / (1 - p)
    return F.linear(x, weight, bias)


class Dropout(nn.Module):
    """Module form of :func:`dropout`."""

    def __init__(self, p: float, *, channel: bool = False) -> None:
        """Args: p: drop probability in [0, 1); channel: drop whole channels of conv maps."""
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply dropout in training mode; identity in eval mode."""
        return dropout(x, self.p, self.training, channel=self.channel)

    def extra_repr(self) -> str:
        return f"p={self.p}, channel={self.channel}"


class DropConnectLinear(nn.Linear):
    """``nn.Linear`` with DropConnect on its weight (see :func:`drop_connect_linear`)."""

    def __init__(self, in_features: int, out_features: int, p: float, bias: bool = True) -> None:
        """Args: in_features, out_features, bias: as ``nn.Linear``; p: weight drop rate."""
        super().__init__(in_features, out_features, bias=bias)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropConnect probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) -> (B, out), dropping weights in training mode."""
        return drop_connect_linear(x, self.weight, self.bias, self.p, self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"
