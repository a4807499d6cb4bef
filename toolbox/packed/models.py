"""Packed networks: K members of one shape (``toolbox.models``' MLP or CNN) as one model.

A pack's members must share what shapes the computation (``toolbox.packing.PACK_SETTINGS``:
the data set and its split, architecture and sizes, normalization kind and groups,
activation, batch size, device); everything else may differ per member: seed, learning rate,
momentum, Nesterov, weight decay, input normalization, augmentation, dropout rate and rule,
channel dropout, DropConnect, epochs. ``toolbox.packing.pack_key`` is what a sweep groups its
trials by.

Member k starts from exactly the weights its single-trial model gets (``load_members`` copies
them from ``toolbox.models.build_model`` outputs), and ``copy_member_into`` writes member k
back into such a model, so a pack can be built from single-trial checkpoints and unpacked
into them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from toolbox.config import ModelConfig
from toolbox.models import MIN_POOL_SIZE, get_activation
from toolbox.packed.layers import (
    MemberModule,
    PackContext,
    PackedConv2d,
    PackedDropout,
    PackedLinear,
    PackedNorm,
)

SOLO_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
"""The single-trial layers with parameters, in the order a packed network mirrors them."""
PACKED_LAYERS = (PackedLinear, PackedConv2d, PackedNorm)


def _fc_dropout_rates(cfgs: Sequence[ModelConfig]) -> list[float]:
    return [0.0 if c.dropconnect else c.dropout for c in cfgs]


def _dropconnect_rates(cfgs: Sequence[ModelConfig]) -> list[float]:
    return [c.dropout if c.dropconnect else 0.0 for c in cfgs]


def _maybe_dropout(
    rates: list[float], cfgs: Sequence[ModelConfig], ctx: PackContext, channel: bool = False
) -> list[nn.Module]:
    if not any(rates):
        return []
    return [PackedDropout(rates, [c.dropout_rule for c in cfgs], ctx, channel=channel)]


def _linear(
    cfgs: Sequence[ModelConfig], n_in: int, n_out: int, ctx: PackContext, **kw: object
) -> PackedLinear:
    drop = _dropconnect_rates(cfgs) if kw.get("after_hidden") else [0.0] * len(cfgs)
    bias = bool(kw.get("bias", True))
    return PackedLinear(n_in, n_out, bias, drop, [c.dropout_rule for c in cfgs], ctx)


def _uses_bias(norm: str) -> bool:
    return norm not in ("batch", "instance")  # as toolbox.models


def _norm(
    shape: ModelConfig, k: int, features: int, spatial: bool, ctx: PackContext
) -> list[nn.Module]:
    if shape.norm == "none":
        return []
    return [PackedNorm(shape.norm, k, features, spatial, shape.groups, ctx)]


def _mlp_head(cfgs: Sequence[ModelConfig], n_in: int, classes: int, ctx: PackContext) -> list:
    shape, k = cfgs[0], len(cfgs)
    layers: list[nn.Module] = []
    for i in range(shape.depth):
        bias = _uses_bias(shape.norm)
        layers.append(_linear(cfgs, n_in, shape.width, ctx, after_hidden=i > 0, bias=bias))
        layers += _norm(shape, k, shape.width, False, ctx)
        layers.append(get_activation(shape.activation))
        layers += _maybe_dropout(_fc_dropout_rates(cfgs), cfgs, ctx)
        n_in = shape.width
    layers.append(_linear(cfgs, n_in, classes, ctx, after_hidden=True))  # (K, B, classes)
    return layers


def _cnn_features(
    cfgs: Sequence[ModelConfig], in_shape: tuple[int, int, int], ctx: PackContext
) -> tuple[list[nn.Module], int]:
    shape, k = cfgs[0], len(cfgs)
    c, h, w = in_shape
    conv_rates = [c_.dropout if c_.dropout_conv else 0.0 for c_ in cfgs]
    layers: list[nn.Module] = []
    for i in range(shape.depth):
        c_out = shape.width * 2**i
        pool = min(h, w) >= MIN_POOL_SIZE
        layers.append(PackedConv2d(k, c, c_out, _uses_bias(shape.norm), ctx))
        layers += _norm(shape, k, c_out, True, ctx)
        layers.append(get_activation(shape.activation))
        layers += _maybe_dropout(conv_rates, cfgs, ctx, channel=True)
        if pool:
            layers.append(nn.MaxPool2d(2))
        c, h, w = c_out, (h // 2 if pool else h), (w // 2 if pool else w)
    return [*layers, nn.AdaptiveAvgPool2d(1)], c  # (B, K*C, 1, 1), or (B, C, 1, 1) per member


class PackedNet(nn.Module):
    """K members of ``toolbox.models``' MLP or CNN trained as one network.

    Maps (K, B, C, H, W) images, member k's batch at ``[k]``, to (K, B, classes) logits.
    Member k computes what its single-trial model computes, up to float rounding, with its own
    dropout masks (see :mod:`toolbox.packed.layers`).

    Args:
        cfgs: one :class:`ModelConfig` per member, equal in the shape settings.
        in_shape: (C, H, W) of one image.
        num_classes: outputs per member.
        ctx: the members' generators, active flags and conv layout (shared with the trainer).
    """

    def __init__(
        self,
        cfgs: Sequence[ModelConfig],
        in_shape: tuple[int, int, int],
        num_classes: int,
        ctx: PackContext,
    ) -> None:
        super().__init__()
        shape = cfgs[0]
        self.arch, self.ctx = shape.arch, ctx
        self.grouped: bool | None = None
        """Conv maps grouped (``True``) or one member at a time (``False``); ``None``: grouped
        on CUDA only (see :mod:`toolbox.packed.layers`)."""
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        features: list[nn.Module] = []
        if shape.arch == "cnn":
            features, n_in = _cnn_features(cfgs, in_shape, ctx)
            head = [
                _linear(cfgs, n_in, shape.fc_width, ctx),
                get_activation(shape.activation),
                *_maybe_dropout(_fc_dropout_rates(cfgs), cfgs, ctx),
                _linear(cfgs, shape.fc_width, num_classes, ctx, after_hidden=True),
            ]
        else:
            head = _mlp_head(cfgs, n_in, num_classes, ctx)
        self.features = nn.Sequential(*features)
        self.head = nn.Sequential(*head)

    @property
    def members(self) -> int:
        """K, the members packed."""
        return len(self.ctx.active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, C, H, W) -> (K, B, classes)."""
        k, b = x.shape[:2]
        grouped = self.ctx.grouped = x.is_cuda if self.grouped is None else self.grouped
        if self.arch == "cnn" and grouped:
            x = x.transpose(0, 1).reshape(b, -1, *x.shape[3:])  # (B, K*C, H, W)
            x = self.features(x).view(b, k, -1).transpose(0, 1)  # (K, B, C)
        elif self.arch == "cnn":
            x = self._one_member_at_a_time(x)  # (K, B, C)
        else:
            x = x.flatten(2)  # (K, B, C*H*W)
        return self.head(x)

    def _one_member_at_a_time(self, x: torch.Tensor) -> torch.Tensor:
        """The conv part on (K, B, C, H, W), each member's maps alone: (K, B, C)."""
        layers = [m for m in self.features if isinstance(m, MemberModule)]
        for layer in layers:
            layer.split_members()
        outs = []
        for i, xi in enumerate(x.unbind(0)):
            self.ctx.member = i
            xi = xi.contiguous(memory_format=torch.channels_last)
            outs.append(self.features(xi).flatten(1))  # (B, C)
        for layer in layers:
            layer.join_members()
        return torch.stack(outs)

    def _member_layers(self) -> list[MemberModule]:
        return [m for m in self.modules() if isinstance(m, PACKED_LAYERS)]

    def pairs(self, solo: nn.Module) -> list[tuple[MemberModule, nn.Module]]:
        """The packed layers with parameters and ``solo``'s corresponding layers, in order."""
        solo_layers = [m for m in solo.modules() if isinstance(m, SOLO_LAYERS)]
        packed = self._member_layers()
        assert len(solo_layers) == len(packed), "a single-trial model of another shape"
        return list(zip(packed, solo_layers, strict=True))

    def load_members(self, solos: Sequence[nn.Module]) -> None:
        """Copy every parameter and buffer of one single-trial model per member into the pack."""
        per_member = [self.pairs(solo) for solo in solos]
        for i, (layer, _) in enumerate(per_member[0]):
            layer.load_members([pairs[i][1] for pairs in per_member])

    def copy_member_into(self, k: int, solo: nn.Module) -> None:
        """Load member ``k``'s parameters and buffers into the single-trial model ``solo``."""
        with torch.no_grad():
            for layer, solo_layer in self.pairs(solo):
                for name, value in layer.member_state(k).items():
                    getattr(solo_layer, name).copy_(value)

    def keep_members(self, idx: Sequence[int]) -> None:
        """Keep only the members ``idx``: new parameter tensors, one fewer packed member each."""
        for module in self.modules():
            if isinstance(module, MemberModule):
                module.keep_members(idx)
        self.ctx.keep(idx)
        self.set_active(self.ctx.active)

    def set_active(self, active: Sequence[bool]) -> None:
        """Mark members as training (``True``) or masked: a masked member draws no dropout
        masks and its batch-norm statistics stay as they are."""
        self.ctx.active = list(active)
        frozen = None
        if not all(active):
            device = next(self.parameters()).device
            frozen = ~torch.tensor(list(active), device=device)
        for module in self.modules():
            if isinstance(module, PackedNorm):
                module.frozen = frozen
