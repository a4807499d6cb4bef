"""Layers of a packed network: K same-shape members computed as one wider layer.

Every packed parameter and buffer has the member as its first dimension, (K, ...), so member k
is the slice ``[k]`` and the packed optimizer broadcasts per-member coefficients over it.
Fully connected features are (K, B, F), ready for one batched matrix product
(``torch.baddbmm``) over the stacked weights. Conv maps have one of two layouts
(:attr:`PackContext.grouped`):

- grouped, (B, K*C, H, W): member k's channels are ``[k*C, (k+1)*C)``; a convolution is one
  grouped convolution (``groups=K``) and every norm runs over K*C channels. One kernel per
  layer, which is what a GPU wants (HFTA's layout).
- one member at a time, (B, C, H, W): the conv part runs once per member
  (:attr:`PackContext.member` names it) with that member's slices of the packed parameters,
  single-trial kernels on single-trial tensors. On the CPU, oneDNN's grouped convolution is
  several times slower than the same work as K ordinary convolutions, and K members' maps
  side by side no longer fit in cache (bench/RESULTS.md); the fully connected part, the loss,
  the optimizer, data and evaluation stay packed.

Randomness is per member: dropout and DropConnect masks are drawn for each member from its own
generator (:class:`PackContext`), with exactly the shapes and operations the single-trial
layers use (``toolbox.dropout``: a Bernoulli(1 - p) draw divided by 1 - p), so on the CPU a
member draws bit-identical masks to the same trial trained alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from toolbox.config import DropoutRule

NORM_EPS = 1e-5
"""The eps of torch's norm layers, which the single-trial models use with their defaults."""
BN_MOMENTUM = 0.1
"""torch's batch-norm momentum for the running statistics, as the single-trial models use."""


@dataclass
class PackContext:
    """What the packed layers share: the members' generators, which train, the conv layout.

    Attributes:
        generators: member k's dropout and DropConnect masks come from ``generators[k]``.
        active: masked members (``False``) draw nothing, so their streams stay where they
            were when they stopped.
        grouped: conv maps are (B, K*C, H, W) and use grouped kernels; otherwise the conv
            part runs one member at a time (see the module).
        member: the member whose conv maps are being computed, when not ``grouped``.
    """

    generators: list[torch.Generator] = field(default_factory=list)
    active: list[bool] = field(default_factory=list)
    grouped: bool = False
    member: int = 0

    def keep(self, idx: Sequence[int]) -> None:
        """Keep only the members ``idx``, in that order."""
        self.generators = [self.generators[i] for i in idx]
        self.active = [self.active[i] for i in idx]


class MemberModule(nn.Module):
    """A module whose parameters, buffers and :attr:`member_lists` are indexed by member."""

    member_lists: tuple[str, ...] = ()
    """Names of plain list attributes with one entry per member."""
    transposed: tuple[str, ...] = ()
    """Names of parameters whose member slices hold the single-trial layer's tensors
    transposed (last two dimensions); see :meth:`member_layout` and :meth:`solo_layout`."""
    slices: dict[str, tuple[torch.Tensor, ...]] = {}  # noqa: RUF012 (replaced, never mutated)

    def keep_members(self, idx: Sequence[int]) -> None:
        """Keep only the members ``idx`` (new tensors; a packed optimizer must follow)."""
        index = list(idx)
        for name, param in list(self._parameters.items()):
            if param is not None:
                self._parameters[name] = nn.Parameter(param.detach()[index].clone())
        for name, buf in list(self._buffers.items()):
            if buf is not None:
                self._buffers[name] = buf[index].clone()
        for name in self.member_lists:
            setattr(self, name, [getattr(self, name)[i] for i in index])

    def split_members(self) -> None:
        """Take every member's slices of the parameters for a pass one member at a time (one
        ``unbind`` per pass: indexing each member would make the backward pass add K
        zero-filled full-size gradients per parameter); :meth:`join_members` drops them."""
        self.slices = {name: p.unbind(0) for name, p in self._parameters.items() if p is not None}

    def join_members(self) -> None:
        """Drop the slices :meth:`split_members` took."""
        self.slices = {}

    def member_layout(self, name: str, solo: torch.Tensor) -> torch.Tensor:
        """The single-trial layer's tensor ``name`` (or a tensor shaped like it: a velocity)
        as a member's slice of the packed tensor ``name``; may be a view."""
        return solo.mT if name in self.transposed else solo

    def solo_layout(self, name: str, member: torch.Tensor) -> torch.Tensor:
        """A member's slice of the packed tensor ``name`` as the single-trial layer holds it:
        the inverse of :meth:`member_layout`, a contiguous copy."""
        solo = member.mT if name in self.transposed else member
        return solo.clone(memory_format=torch.contiguous_format)

    def load_members(self, solos: Sequence[nn.Module]) -> None:
        """Stack the same-named parameters and buffers of one single-trial layer per member."""
        with torch.no_grad():
            for name, tensor in [*self._parameters.items(), *self._buffers.items()]:
                if tensor is not None:
                    rows = [self.member_layout(name, getattr(s, name).detach()) for s in solos]
                    tensor.copy_(torch.stack(rows))

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s parameters and buffers under the single-trial layer's names."""
        named = [*self._parameters.items(), *self._buffers.items()]
        return {name: self.solo_layout(name, t.detach()[k]) for name, t in named if t is not None}


def member_masks(
    shape: tuple[int, ...], rates: Sequence[float], ctx: PackContext, like: torch.Tensor
) -> torch.Tensor:
    """(K, *shape) dropout masks: member k's Bernoulli(1 - p_k) draw divided by 1 - p_k.

    This is the mask ``torch.nn.functional.dropout`` draws on the CPU (same shape, same
    generator call), from member k's own generator; members with rate 0 or masked draw nothing
    and get ones.
    """
    rows = zip(rates, ctx.generators, ctx.active, strict=True)
    return torch.stack([member_mask(shape, p, gen, active, like) for p, gen, active in rows])


def member_mask(
    shape: tuple[int, ...], p: float, gen: torch.Generator, active: bool, like: torch.Tensor
) -> torch.Tensor:
    """One member's mask (see :func:`member_masks`): ones when ``p`` is 0 or not ``active``."""
    mask = torch.ones(shape, dtype=like.dtype, device=like.device)
    if p > 0.0 and active:
        mask.bernoulli_(1.0 - p, generator=gen).div_(1.0 - p)
    return mask


def rule_scales(rates: Sequence[float], rules: Sequence[DropoutRule]) -> list[float]:
    """Per-member output scale of the weight-scaling rule (1 - p), 1 for inverted dropout."""
    return [
        1.0 - p if rule == "weight_scaling" else 1.0 for p, rule in zip(rates, rules, strict=True)
    ]


class PackedLinear(MemberModule):
    """K linear layers as one ``baddbmm``: (K, B, in) -> (K, B, out), with DropConnect.

    ``weight`` is (K, in, out), member k's slice the transpose of its ``nn.Linear`` weight
    (:attr:`~MemberModule.transposed`), so that the batched product takes it as it is: with a
    transposed view of (K, out, in) weights instead, the forward and backward passes cost
    about a sixth more (bench/RESULTS.md). ``bias`` is (K, out). Members with a DropConnect
    rate drop weights as :func:`toolbox.dropout.drop_connect_linear` does (one mask per
    minibatch, from their own generator, scaled by their own rule); the others use their
    weights as they are.
    """

    member_lists = ("drop_rates", "rules")
    transposed = ("weight",)

    def __init__(
        self,
        n_in: int,
        n_out: int,
        bias: bool,
        drop_rates: Sequence[float],
        rules: Sequence[DropoutRule],
        ctx: PackContext,
    ) -> None:
        """Args: n_in, n_out, bias: as ``nn.Linear``; drop_rates: per-member DropConnect rate
        (0: none); rules: per-member scaling rule; ctx: the members' generators."""
        super().__init__()
        k = len(drop_rates)
        self.weight = nn.Parameter(torch.empty(k, n_in, n_out))
        self.bias = nn.Parameter(torch.empty(k, n_out)) if bias else None
        self.drop_rates, self.rules, self.ctx = list(drop_rates), list(rules), ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, in) -> (K, B, out)."""
        weight: torch.Tensor = self.weight  # (K, in, out)
        if any(self.drop_rates):
            if self.training:
                # (K, out, in) masks, drawn in the single-trial weight's order
                masks = member_masks(weight.mT.shape[1:], self.drop_rates, self.ctx, x)
                weight = weight * masks.mT
            scales = rule_scales(self.drop_rates, self.rules)
            if any(s != 1.0 for s in scales):
                weight = weight * torch.tensor(scales, device=x.device).view(-1, 1, 1)
        if self.bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight)

    def extra_repr(self) -> str:
        k, n_in, n_out = self.weight.shape
        return f"members={k}, in={n_in}, out={n_out}, dropconnect={self.drop_rates}"


class PackedConv2d(MemberModule):
    """K 3x3 convolutions (padding 1) on packed conv maps (either layout, see the module).

    ``weight`` is (K, out, in, 3, 3) and ``bias`` (K, out). Grouped, the weight is viewed as
    (K*out, in, 3, 3) with ``groups=K``, so member k's outputs read only member k's inputs; one
    member at a time, member k's maps are convolved with ``weight[k]``.
    """

    def __init__(self, members: int, c_in: int, c_out: int, bias: bool, ctx: PackContext):
        """Args: members: K; c_in, c_out: channels of one member; bias: as ``nn.Conv2d``;
        ctx: the pack's layout."""
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.empty(members, c_out)) if bias else None
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K*in, H, W) -> (B, K*out, H, W) grouped; (B, in, H, W) -> (B, out, H, W) for
        :attr:`PackContext.member`."""
        if self.ctx.grouped:
            bias = None if self.bias is None else self.bias.flatten()
            return F.conv2d(x, self.weight.flatten(0, 1), bias, padding=1, groups=len(self.weight))
        i = self.ctx.member
        bias = None if self.bias is None else self.slices["bias"][i]
        return F.conv2d(x, self.slices["weight"][i], bias, padding=1)


class PackedNorm(MemberModule):
    """Batch, layer, instance or group norm of K members, each over its own features only.

    Per-member gamma and beta are (K, C), and so are batch norm's running statistics. On
    (B, K*C, ...) maps (grouped conv maps, and fully connected (K, B, F) features viewed as
    (B, K*F)) all kinds run once over K*C channels: batch norm is per channel already; layer,
    instance and group norm become group norm with K, K*C and K*groups groups, whose groups
    never straddle two members. One member at a time, the member's maps are normalized by the
    single-trial kernel with its slices.
    """

    running_mean: torch.Tensor  # (K, C) buffers, batch norm only
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor  # (K,)

    def __init__(
        self, kind: str, members: int, features: int, spatial: bool, groups: int, ctx: PackContext
    ) -> None:
        """Args: kind: ``batch``, ``layer``, ``instance`` or ``group``; members: K; features:
        channels or features of one member; spatial: conv maps rather than (K, B, F);
        groups: groups of one member for ``group``; ctx: the pack's layout."""
        super().__init__()
        self.kind, self.spatial, self.ctx = kind, spatial, ctx
        self.weight = nn.Parameter(torch.ones(members, features))
        self.bias = nn.Parameter(torch.zeros(members, features))
        self.groups_per_member = {"layer": 1, "instance": features, "group": groups}.get(kind, 0)
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(members, features))
            self.register_buffer("running_var", torch.ones(members, features))
            self.register_buffer("num_batches_tracked", torch.zeros(members, dtype=torch.long))
        self.frozen: torch.Tensor | None = None  # (K,) bool: members whose statistics stay put

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Packed conv maps in either layout, or (K, B, F) features; same shape out."""
        k, c = self.weight.shape
        if self.spatial and not self.ctx.grouped:
            return self._one_member(x, self.ctx.member)
        flat = x if self.spatial else x.transpose(0, 1).reshape(x.shape[1], k * c)
        out = self._over_channels(flat, k)
        return out if self.spatial else out.view(x.shape[1], k, c).transpose(0, 1)

    def _one_member(self, x: torch.Tensor, i: int) -> torch.Tensor:
        weight, bias = self.slices["weight"][i], self.slices["bias"][i]
        if self.kind != "batch":
            return F.group_norm(x, self.groups_per_member, weight, bias, NORM_EPS)
        mean, var = self.running_mean[i], self.running_var[i]  # views: updated in place
        frozen = self.training and self.frozen is not None and bool(self.frozen[i])
        if frozen:
            mean, var = mean.clone(), var.clone()
        elif self.training:
            self.num_batches_tracked[i] += 1
        return F.batch_norm(x, mean, var, weight, bias, self.training, BN_MOMENTUM, NORM_EPS)

    def _over_channels(self, x: torch.Tensor, k: int) -> torch.Tensor:
        weight, bias = self.weight.flatten(), self.bias.flatten()
        if self.kind != "batch":
            return F.group_norm(x, k * self.groups_per_member, weight, bias, NORM_EPS)
        if not self.training:
            return F.batch_norm(
                x, self.running_mean.flatten(), self.running_var.flatten(), weight, bias,
                False, BN_MOMENTUM, NORM_EPS,
            )  # fmt: skip
        if self.frozen is None:
            self.num_batches_tracked.add_(1)
            return F.batch_norm(
                x, self.running_mean.view(-1), self.running_var.view(-1), weight, bias,
                True, BN_MOMENTUM, NORM_EPS,
            )  # fmt: skip
        # Masked members keep the statistics they stopped with: update copies (which autograd
        # may keep for the backward pass) and take the active members' rows from them.
        mean, var = self.running_mean.clone(), self.running_var.clone()
        out = F.batch_norm(
            x, mean.view(-1), var.view(-1), weight, bias, True, BN_MOMENTUM, NORM_EPS
        )
        keep = self.frozen.view(-1, 1)
        self.running_mean.copy_(torch.where(keep, self.running_mean, mean))
        self.running_var.copy_(torch.where(keep, self.running_var, var))
        self.num_batches_tracked.add_((~self.frozen).long())
        return out

    def extra_repr(self) -> str:
        k, c = self.weight.shape
        return f"{self.kind}, members={k}, features={c}, spatial={self.spatial}"


class PackedDropout(MemberModule):
    """Per-member dropout with per-member rates and rules, as :func:`toolbox.dropout.dropout`.

    ``channel=True`` drops whole channels of conv maps, either layout (one (B, C, 1, 1) mask per
    member); otherwise units of (K, B, F) features (one (B, F) mask per member).
    """

    member_lists = ("rates", "rules")

    def __init__(
        self,
        rates: Sequence[float],
        rules: Sequence[DropoutRule],
        ctx: PackContext,
        *,
        channel: bool = False,
    ) -> None:
        """Args: rates: per-member drop probability (0: none); rules: per-member scaling
        rule; ctx: the members' generators; channel: drop conv channels."""
        super().__init__()
        self.rates, self.rules, self.ctx, self.channel = list(rates), list(rules), ctx, channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop in training, scale by the rule; same shape out."""
        k = len(self.rates)
        if self.training:
            if self.channel and self.ctx.grouped:
                b, kc = x.shape[:2]
                masks = member_masks((b, kc // k, 1, 1), self.rates, self.ctx, x)  # (K, B, C, ..)
                x = x * masks.transpose(0, 1).reshape(b, kc, 1, 1)
            elif self.channel:
                i, ctx = self.ctx.member, self.ctx
                shape = (*x.shape[:2], 1, 1)
                x = x * member_mask(shape, self.rates[i], ctx.generators[i], ctx.active[i], x)
            else:
                x = x * member_masks(x.shape[1:], self.rates, self.ctx, x)  # (K, B, F)
        scales = rule_scales(self.rates, self.rules)
        if all(s == 1.0 for s in scales):
            return x
        scale = torch.tensor(scales, device=x.device, dtype=x.dtype)
        if self.channel and self.ctx.grouped:
            return x * scale.repeat_interleave(x.shape[1] // k).view(1, -1, 1, 1)
        if self.channel:
            return x * scale[self.ctx.member]
        return x * scale.view(-1, 1, 1)

    def extra_repr(self) -> str:
        return f"rates={self.rates}, rules={self.rules}, channel={self.channel}"
