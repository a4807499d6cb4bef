"""Hidden-layer normalization: a registry of layer factories and one :func:`get_norm_layer`.

Every kind has a learned per-feature scale gamma and shift beta. On conv features
(B, C, H, W) the kinds differ in which axes share one mean and variance:

- ``batch``: (B, H, W) per channel; running statistics replace them in ``eval()``.
- ``layer``: (C, H, W) per sample.
- ``instance``: (H, W) per sample and channel.
- ``group``: (C / groups, H, W) per sample and group of channels.

On fully connected features (B, F), ``batch`` normalizes over B per feature, ``layer`` over F per
sample and ``group`` over F / groups per sample; ``instance`` needs spatial positions.
torch's built-in layers are used because they are fused and fast; the mapping is documented
in each factory.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from toolbox.errors import ConfigError

NormFactory = Callable[[int, bool, int], nn.Module]
"""(num_features, spatial, groups) -> layer."""


def _none(num_features: int, spatial: bool, groups: int) -> nn.Module:
    return nn.Identity()


def _batch(num_features: int, spatial: bool, groups: int) -> nn.Module:
    return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)


def _layer(num_features: int, spatial: bool, groups: int) -> nn.Module:
    # GroupNorm with one group is layer norm over (C, H, W) with a per-channel gamma and beta,
    # which is what conv layer norm means; nn.LayerNorm would learn one gamma per pixel.
    return nn.GroupNorm(1, num_features) if spatial else nn.LayerNorm(num_features)


def _instance(num_features: int, spatial: bool, groups: int) -> nn.Module:
    if not spatial:
        raise ConfigError(
            "norm='instance' normalizes over spatial positions, which fully connected "
            "features do not have; use layer, group, batch or none"
        )
    # One group per channel: statistics over (H, W) per sample and channel, the same in train
    # and eval (InstanceNorm2d would need affine=True and warns on small maps).
    return nn.GroupNorm(num_features, num_features)


def _group(num_features: int, spatial: bool, groups: int) -> nn.Module:
    if num_features % groups:
        raise ConfigError(f"groups={groups} does not divide {num_features} features")
    return nn.GroupNorm(groups, num_features)


NORM_LAYERS: dict[str, NormFactory] = {
    "none": _none,
    "batch": _batch,
    "layer": _layer,
    "instance": _instance,
    "group": _group,
}
"""Normalization name -> layer factory."""


def get_norm_layer(name: str, num_features: int, *, spatial: bool, groups: int = 1) -> nn.Module:
    """Build the normalization layer ``name`` for ``num_features`` channels or features.

    Args:
        name: a key of :data:`NORM_LAYERS`.
        num_features: channels (``spatial=True``) or features of the input.
        spatial: the input is (B, C, H, W) rather than (B, F).
        groups: number of channel groups for ``group``; ignored by the others.

    Returns:
        The layer; ``nn.Identity`` for ``none``.

    Raises:
        toolbox.errors.ConfigError: unknown name, ``instance`` on non-spatial features, or
            ``groups`` not dividing ``num_features``.
    """
    try:
        factory = NORM_LAYERS[name]
    except KeyError:
        raise ConfigError(f"unknown norm {name!r}; choose one of {sorted(NORM_LAYERS)}") from None
    return factory(num_features, spatial, groups)
