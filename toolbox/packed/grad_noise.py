"""The ``grad_noise`` metric of every member of a pack at once (see :mod:`toolbox.grad_noise`).

The same two running sums as :class:`toolbox.grad_noise.GradNoise`, over packed (K, ...)
gradients, with the squared norms kept per member: member k's value is what the single-trial
metric gives for member k, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _member_sq_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(K,) squared Euclidean norm of each member's slices of ``tensors`` together."""
    return torch.stack([t.flatten(1).square().sum(dim=1) for t in tensors]).sum(dim=0)


class PackedGradNoise:
    """Running sums of one epoch's minibatch gradients, per member.

    Call :meth:`add` after each backward pass and before the optimizer step.
    """

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        """Args: params: the packed model's (K, ...) parameters."""
        self.params = [p for p in params if p.requires_grad]
        self.batches = 0
        self._sums: list[torch.Tensor] = []
        self._sq_norms: torch.Tensor | None = None  # (K,)

    @torch.no_grad()
    def add(self) -> None:
        """Add the current gradients (one minibatch's) to the sums."""
        grads = [p.grad for p in self.params if p.grad is not None]
        assert len(grads) == len(self.params), "every trainable parameter needs a gradient"
        sq_norms = _member_sq_norms(grads)
        if self._sq_norms is None:
            self._sums = [g.clone() for g in grads]
            self._sq_norms = sq_norms
        else:
            torch._foreach_add_(self._sums, grads)
            self._sq_norms += sq_norms
        self.batches += 1

    @torch.no_grad()
    def value(self) -> torch.Tensor | None:
        """(K,) estimates on the device, or ``None`` with fewer than two batches."""
        if self._sq_norms is None or self.batches < 2:
            return None
        b = self.batches
        spread = (self._sq_norms - _member_sq_norms(self._sums) / b).clamp_min(0.0)
        return (spread / (b - 1)).sqrt()
