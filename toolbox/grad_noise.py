"""The ``grad_noise`` metric: how much an epoch's minibatch gradients spread around their mean.

An SGD step follows the gradient of one minibatch's loss, a noisy estimate of the gradient over
all training data whose noise falls like 1 / sqrt(batch size). :class:`GradNoise` estimates that
noise from two running sums over the epoch's batches, the gradients ``g_b`` themselves and their
squared norms ``|g_b|^2``, taken after each backward pass and before the step: no extra backward
passes, and nothing leaves the device until the epoch's one synchronization. The weights move
during the epoch, so the spread also holds the drift of the full gradient along the way; with a
small learning rate it is the minibatch noise alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class GradNoise:
    """Running sums of one epoch's minibatch gradients over every trainable parameter.

    Call :meth:`add` after each ``loss.backward()`` and before ``optimizer.step()`` (the step
    adds weight decay and momentum; the loss gradient alone is what the batch estimates).
    """

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        """Args: params: the model's parameters; those that need no gradient are skipped."""
        self.params = [p for p in params if p.requires_grad]
        self.batches = 0
        self._sums: list[torch.Tensor] = []  # sum of g_b, per parameter
        self._sq_norms: torch.Tensor | None = None  # sum of |g_b|^2, 0-dim

    @torch.no_grad()
    def add(self) -> None:
        """Add the current gradients (one minibatch's) to the sums."""
        grads = [p.grad for p in self.params if p.grad is not None]
        assert len(grads) == len(self.params), "every trainable parameter needs a gradient"
        # The fused multi-tensor ops (those of torch's optimizers) take a few kernel launches
        # per batch instead of a few per parameter.
        sq_norm = torch.stack(torch._foreach_norm(grads)).square().sum()
        if self._sq_norms is None:
            self._sums = [g.clone() for g in grads]
            self._sq_norms = sq_norm
        else:
            torch._foreach_add_(self._sums, grads)
            self._sq_norms += sq_norm
        self.batches += 1

    @torch.no_grad()
    def value(self) -> torch.Tensor | None:
        """sqrt(sum_b |g_b - mean|^2 / (B - 1)) as a 0-dim device tensor, not synchronized.

        Returns:
            The estimate, or ``None`` with fewer than two batches (no spread to measure).
        """
        if self._sq_norms is None or self.batches < 2:
            return None
        b = self.batches
        # sum_b |g_b - mean|^2 = sum_b |g_b|^2 - |sum_b g_b|^2 / B
        sum_sq_norm = torch.stack(torch._foreach_norm(self._sums)).square().sum()
        spread = (self._sq_norms - sum_sq_norm / b).clamp_min(0.0)  # rounding can dip below 0
        return (spread / (b - 1)).sqrt()
