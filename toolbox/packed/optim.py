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

_Stepped = tuple[str, nn.Parameter, dict[str, torch.Tensor]]
"""A parameter with a gradient: its name, itself, its coefficient columns."""


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(K, 1, ..., 1) coefficients that broadcast over a (K, ...) parameter."""
    return torch.tensor(list(values), dtype=like.dtype, device=like.device).view(
        -1, *[1] * (like.ndim - 1)
    )


def _grad(param: nn.Parameter) -> torch.Tensor:
    assert param.grad is not None  # only parameters with a gradient are stepped
    return param.grad


def _rows(
    frozen: list[int], tensors: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The ``frozen`` members' rows of ``tensors`` (copies), with their index; ``None`` if none."""
    if not frozen or not tensors:
        return None
    index = torch.tensor(frozen, device=tensors[0].device)
    return index, [t.index_select(0, index) for t in tensors]


class PackedSGD:
    """Per-member SGD over a packed model's (K, ...) parameters.

    A step updates velocities and parameters in place, every parameter at once
    (``torch._foreach_*``): as few kernel launches and Python calls per step as
    ``torch.optim.SGD`` makes for one trial, whatever K.

    Args:
        model: the packed network. Its parameters are listed once; after the model's
            ``keep_members`` (new parameter tensors), call :meth:`keep_members` to follow.
        cfgs: one :class:`OptimConfig` per member (``batch_size`` is the pack's, not used here).
    """

    def __init__(self, model: nn.Module, cfgs: Sequence[OptimConfig]) -> None:
        self.model = model
        self.cfgs = list(cfgs)
        self.velocity: dict[str, torch.Tensor] = {}  # packed parameter name -> (K, ...)
        self.has_velocity = [False] * len(self.cfgs)  # as torch: only after a momentum step
        self._params: list[tuple[str, nn.Parameter]] = []
        self._cols: list[dict[str, torch.Tensor]] = []  # per parameter, see _columns
        self._follow_model()

    def _follow_model(self) -> None:
        """List the model's parameters and their (K, 1, ...) coefficient columns."""
        self._params = list(self.model.named_parameters())
        cache: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}
        self._cols = [self._columns(p, cache) for _, p in self._params]

    def _columns(
        self, like: torch.Tensor, cache: dict[tuple[Any, ...], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """-lr, momentum, weight decay and Nesterov as (K, 1, ...) columns, one set per shape."""
        key = (like.ndim, like.dtype, like.device)
        if key not in cache:
            cfgs = self.cfgs
            cache[key] = {
                "neg_lr": _column([-c.lr for c in cfgs], like),
                "momentum": _column([c.momentum for c in cfgs], like),
                "weight_decay": _column([c.weight_decay for c in cfgs], like),
                "nesterov": _column([c.nesterov for c in cfgs], like).bool(),
            }
        return cache[key]

    @torch.no_grad()
    def step(self, active: Sequence[bool] | None = None) -> None:
        """One step of every member; with ``active``, members marked ``False`` stay as they are."""
        stepped = [
            (name, param, cols)
            for (name, param), cols in zip(self._params, self._cols, strict=True)
            if param.grad is not None
        ]
        for name, param, _ in stepped:
            if name not in self.velocity:  # zero, so that the first velocity is the gradient
                self.velocity[name] = torch.zeros_like(param)
        params: list[torch.Tensor] = [param for _, param, _ in stepped]
        velocities = [self.velocity[name] for name, _, _ in stepped]
        frozen = [] if active is None else [k for k, on in enumerate(active) if not on]
        saved = _rows(frozen, [*params, *velocities])
        grads = self._decayed(stepped)
        torch._foreach_mul_(velocities, [cols["momentum"] for _, _, cols in stepped])
        torch._foreach_add_(velocities, grads)  # v = momentum * v + g
        directions = self._directions(stepped, grads, velocities)
        torch._foreach_addcmul_(params, directions, [cols["neg_lr"] for _, _, cols in stepped])
        if saved is not None:  # masked members: back to their rows from before the step
            index, rows = saved
            for tensor, row in zip([*params, *velocities], rows, strict=True):
                tensor.index_copy_(0, index, row)
        for k, cfg in enumerate(self.cfgs):
            if cfg.momentum > 0 and k not in frozen:
                self.has_velocity[k] = True

    def _decayed(self, stepped: list[_Stepped]) -> list[torch.Tensor]:
        """The gradients, with ``wd * w`` added to those a single trial decays."""
        grads = [_grad(param) for _, param, _ in stepped]
        if not any(c.weight_decay for c in self.cfgs):
            return grads
        return [
            torch.addcmul(grad, cols["weight_decay"], param) if param.ndim >= 3 else grad
            for grad, (_, param, cols) in zip(grads, stepped, strict=True)
        ]

    def _directions(
        self, stepped: list[_Stepped], grads: list[torch.Tensor], velocities: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The velocities, or ``g + momentum * v`` for the members with Nesterov."""
        nesterov = [c.nesterov for c in self.cfgs]
        if not any(nesterov):
            return velocities
        momenta = [cols["momentum"] for _, _, cols in stepped]
        ahead = torch._foreach_addcmul(grads, momenta, velocities)
        if all(nesterov):
            return list(ahead)
        return [
            torch.where(cols["nesterov"], a, v)
            for a, v, (_, _, cols) in zip(ahead, velocities, stepped, strict=True)
        ]

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``)."""
        for _, param in self._params:
            param.grad = None

    def keep_members(self, idx: Sequence[int]) -> None:
        """Keep only the members ``idx`` (after the model's ``keep_members``)."""
        index = list(idx)
        self.cfgs = [self.cfgs[i] for i in index]
        self.has_velocity = [self.has_velocity[i] for i in index]
        self.velocity = {name: v[index].clone() for name, v in self.velocity.items()}
        self._follow_model()

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
