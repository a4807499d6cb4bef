"""Dropout of activations and DropConnect of weights, under either of two scaling rules.

Both rules keep a unit's expected output the same in training and at test:

- ``inverted`` (the default): in training every kept unit (or weight) is scaled by 1 / (1 - p),
  so evaluation simply uses every unit and weight as they are.
- ``weight_scaling`` (the rule of the original dropout paper): training keeps units unscaled,
  and at test every outgoing weight, equivalently the unit's output, is multiplied by 1 - p.

The two are the same model up to the scale of the outgoing weights: weights ``w`` under the
inverted rule compute what weights ``w / (1 - p)`` compute under weight scaling, in training
(for the same masks) and at test.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from toolbox.config import DropoutRule

RULES: tuple[str, ...] = get_args(DropoutRule)
"""The scaling rules, ``inverted`` first (the default)."""


def _check(p: float, rule: str, what: str) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} probability must be in [0, 1), got {p}")
    if rule not in RULES:
        raise ValueError(f"{what} rule must be one of {RULES}, got {rule!r}")


def dropout(
    x: torch.Tensor,
    p: float,
    training: bool,
    *,
    channel: bool = False,
    rule: DropoutRule = "inverted",
) -> torch.Tensor:
    """Zero each unit of ``x`` with probability ``p`` in training, keeping expected outputs.

    Args:
        x: activations, (B, F) or (B, C, H, W).
        p: drop probability in [0, 1).
        training: drop only in training.
        channel: drop whole channels of a (B, C, H, W) map (spatial dropout), because
            neighbouring pixels are so correlated that dropping single pixels barely regularizes.
        rule: ``inverted`` scales kept units by 1 / (1 - p) in training and returns ``x``
            unchanged at test; ``weight_scaling`` keeps units unscaled in training and returns
            ``x * (1 - p)`` at test.

    Returns:
        A tensor shaped like ``x``.
    """
    if p == 0.0:
        return x
    if not training:
        return x * (1.0 - p) if rule == "weight_scaling" else x
    # torch's fused kernels implement exactly this Bernoulli mask with inverted scaling;
    # they draw from the default generator of x's device, seeded by torch.manual_seed.
    out = F.dropout2d(x, p, training=True) if channel else F.dropout(x, p, training=True)
    # Undoing the scale keeps the very same mask, so both rules see identical draws.
    return out * (1.0 - p) if rule == "weight_scaling" else out


def drop_connect_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    p: float,
    training: bool,
    rule: DropoutRule = "inverted",
) -> torch.Tensor:
    """A linear layer whose weights are each dropped with probability ``p`` in training.

    One weight mask is drawn per call (per minibatch), not per sample: per-sample masks would
    need a (B, out, in) weight tensor. The bias is kept, as in Wan et al. (2013).

    Args:
        x: (B, in) inputs.
        weight: (out, in) weights.
        bias: (out,) bias or ``None``.
        p: drop probability in [0, 1).
        training: drop only in training.
        rule: ``inverted`` scales kept weights by 1 / (1 - p) in training and uses all
            weights unscaled at test; ``weight_scaling`` keeps weights unscaled in training and
            uses ``weight * (1 - p)`` at test.

    Returns:
        (B, out) outputs.
    """
    if training and p > 0.0:
        weight = F.dropout(weight, p, training=True)  # Bernoulli mask times 1 / (1 - p)
    if rule == "weight_scaling" and p > 0.0:
        # In training this undoes the 1 / (1 - p) above; at test it is the rule's scaling.
        weight = weight * (1.0 - p)
    return F.linear(x, weight, bias)


class Dropout(nn.Module):
    """Module form of :func:`dropout`."""

    def __init__(self, p: float, *, channel: bool = False, rule: DropoutRule = "inverted") -> None:
        """Args: p: drop probability in [0, 1); channel: drop whole channels of conv maps;
        rule: the scaling rule (see :func:`dropout`)."""
        super().__init__()
        _check(p, rule, "dropout")
        self.p = p
        self.channel = channel
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop units in training mode; in eval mode, keep all (scaled by the rule)."""
        return dropout(x, self.p, self.training, channel=self.channel, rule=self.rule)

    def extra_repr(self) -> str:
        return f"p={self.p}, channel={self.channel}, rule={self.rule}"


class DropConnectLinear(nn.Linear):
    """``nn.Linear`` with DropConnect on its weight (see :func:`drop_connect_linear`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float,
        bias: bool = True,
        rule: DropoutRule = "inverted",
    ) -> None:
        """Args: in_features, out_features, bias: as ``nn.Linear``; p: weight drop rate;
        rule: the scaling rule (see :func:`drop_connect_linear`)."""
        super().__init__(in_features, out_features, bias=bias)
        _check(p, rule, "DropConnect")
        self.p = p
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) -> (B, out), dropping weights in training mode."""
        return drop_connect_linear(x, self.weight, self.bias, self.p, self.training, self.rule)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}, rule={self.rule}"
