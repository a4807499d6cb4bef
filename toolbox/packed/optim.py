"""SGD for a packed network: ``toolbox.optim``'s update rule with per-member coefficients.

Every packed parameter is (K, ...), member first. Member k's slice takes exactly the step
``torch.optim.SGD`` (as :func:`toolbox.optim.build_optimizer` configures it) takes on the same
parameter of its single-trial model, with member k's learning rate, momentum, Nesterov and
weight decay: with gradient g, ``g += wd * w`` (decayed tensors only), ``v = momentum * v + g``,
then ``w -= lr * v``, or ``w -= lr * (g + momentum * v)`` with Nesterov. Weight decay applies
to the tensors a single-trial model decays (its weights and kernels, not biases or norm
gamma and beta; :func:`toolbox.optim.param_groups`). A velocity starting at zero makes the
first step ``v = g``, as torch's; a member with momentum 0 keeps ``v = g``, plain SGD.

Masked members (``active`` false) are left exactly as they are, parameters and velocities,
whatever their gradients hold (NaN from a diverged member included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from toolbox.config import OptimConfig


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(K, 1, ..., 1) coefficients that broadcast over a (K, ...) parameter."""
    return torch.tensor(list(values), dtype=like.dtype, device=like.device).view(
        -1, *[1] * (like.ndim - 1)
    )


class PackedSGD:
    """Per-member SGD over a packed model's (K, ...) parameters.

    Args:
        model: the packed network; its parameters are read at every step, so parameters
            replaced by ``keep_members`` are picked up (call :meth:`keep_members` alongside).
        cfgs: one :class:`OptimConfig` per member (``batch_size`` is the pack's, not used here).
    """

    def __init__(self, model: nn.Module, cfgs: Sequence[OptimConfig]) -> None:
        self.model = model
        self.cfgs = list(cfgs)
        self.velocity: dict[str, torch.Tensor] = {}  # packed parameter name -> (K, ...)
        self.has_velocity = [False] * len(self.cfgs)  # as torch: only after a momentum step
        self._cache: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, active: Sequence[bool] | None = None) -> None:
        """One step of every member; with ``active``, members marked ``False`` stay as they are."""
        mask = None
        if active is not None and not all(active):
            device = next(self.model.parameters()).device
            mask = torch.tensor(list(active), device=device)
        for name, param in self.model.named_parameters():
            if param.grad is not None:
                self._step_one(name, param, mask)
        for k, cfg in enumerate(self.cfgs):
            if cfg.momentum > 0 and (active is None or active[k]):
                self.has_velocity[k] = True

    def _columns(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """lr, momentum, weight decay and Nesterov as (K, 1, ...) columns, made once per shape."""
        key = (like.ndim, like.dtype, like.device)
        if key not in self._cache:
            cfgs = self.cfgs
            self._cache[key] = {
                "lr": _column([c.lr for c in cfgs], like),
                "momentum": _column([c.momentum for c in cfgs], like),
                "weight_decay": _column([c.weight_decay for c in cfgs], like),
                "nesterov": _column([c.nesterov for c in cfgs], like).bool(),
            }
        return self._cache[key]

    def _step_one(self, name: str, param: torch.Tensor, active: torch.Tensor | None) -> None:
        assert param.grad is not None
        grad, col = param.grad, self._columns(param)
        if param.ndim >= 3 and any(c.weight_decay for c in self.cfgs):
            grad = grad + col["weight_decay"] * param  # a single trial's matrix or kernel
        old = self.velocity.get(name)
        velocity = grad.clone() if old is None else old * col["momentum"] + grad
        nesterov = [c.nesterov for c in self.cfgs]
        direction = velocity
        if any(nesterov):
            ahead = grad + col["momentum"] * velocity
            direction = ahead if all(nesterov) else torch.where(col["nesterov"], ahead, velocity)
        stepped = param - col["lr"] * direction
        if active is not None:
            keep = active.view(-1, *[1] * (param.ndim - 1))
            stepped = torch.where(keep, stepped, param)
            velocity = torch.where(keep, velocity, 0.0 if old is None else old)
        param.copy_(stepped)
        self.velocity[name] = velocity

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``)."""
        for param in self.model.parameters():
            param.grad = None

    def keep_members(self, idx: Sequence[int]) -> None:
        """Keep only the members ``idx`` (after the model's ``keep_members``)."""
        index = list(idx)
        self.cfgs = [self.cfgs[i] for i in index]
        self._cache.clear()
        self.has_velocity = [self.has_velocity[i] for i in index]
        self.velocity = {name: v[index].clone() for name, v in self.velocity.items()}

    def load_member_velocity(self, name: str, values: Sequence[torch.Tensor | None]) -> None:
        """Set parameter ``name``'s velocity from one tensor per member (``None``: zero)."""
        param = dict(self.model.named_parameters())[name]
        rows = [torch.zeros_like(param[0]) if v is None else v.to(param) for v in values]
        self.velocity[name] = torch.stack(rows)
        self.has_velocity = [
            h or v is not None for h, v in zip(self.has_velocity, values, strict=True)
        ]

    def member_velocity(self, name: str, k: int) -> torch.Tensor | None:
        """Member ``k``'s velocity of parameter ``name``, ``None`` where torch would hold none."""
        velocity = self.velocity.get(name)
        if velocity is None or not self.has_velocity[k]:
            return None
        return velocity[k].clone()
