"""The networks a trial can train: an MLP and a small CNN, built from a :class:`ModelConfig`.

Regularization placement is shared by both: dropout follows every hidden fully connected
activation, and DropConnect (instead of dropout) sits on every fully connected layer that
would have received those dropped activations, so both regularize the same connections. Both
follow ``cfg.dropout_rule``, and every hidden layer uses the nonlinearity ``cfg.activation``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from toolbox.config import ModelConfig
from toolbox.dropout import DropConnectLinear, Dropout
from toolbox.norm import get_norm_layer

MIN_POOL_SIZE = 4
"""Max-pool a conv block only while its map is at least this big, so maps never shrink below
2x2 (instance and batch statistics over a single pixel are meaningless)."""


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    # In place is safe after a linear, conv or norm layer: nothing else reads its output.
    "relu": lambda: nn.ReLU(inplace=True),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
"""Activation name -> layer factory."""


def get_activation(name: str) -> nn.Module:
    """A fresh nonlinearity layer named by :data:`toolbox.config.Activation`."""
    return ACTIVATIONS[name]()


def _uses_bias(norm: str) -> bool:
    # Batch and instance norm subtract a per-channel mean that swallows a per-channel bias.
    return norm not in ("batch", "instance")


def _linear(
    cfg: ModelConfig, n_in: int, n_out: int, *, after_hidden: bool, bias: bool = True
) -> nn.Linear:
    """A fully connected layer; DropConnect when it consumes hidden activations."""
    if cfg.dropconnect and after_hidden:
        return DropConnectLinear(n_in, n_out, cfg.dropout, bias=bias, rule=cfg.dropout_rule)
    return nn.Linear(n_in, n_out, bias=bias)


def _fc_dropout(cfg: ModelConfig) -> list[nn.Module]:
    if cfg.dropout == 0 or cfg.dropconnect:
        return []
    return [Dropout(cfg.dropout, rule=cfg.dropout_rule)]


def build_mlp(cfg: ModelConfig, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Flatten, then ``depth`` x (Linear -> norm -> activation -> dropout), then a linear
    classifier."""
    c, h, w = in_shape
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C*H*W)
    n_in = c * h * w
    for i in range(cfg.depth):
        bias = _uses_bias(cfg.norm)
        layers.append(_linear(cfg, n_in, cfg.width, after_hidden=i > 0, bias=bias))
        layers.append(get_norm_layer(cfg.norm, cfg.width, spatial=False, groups=cfg.groups))
        layers += [get_activation(cfg.activation), *_fc_dropout(cfg)]
        n_in = cfg.width
    layers.append(_linear(cfg, n_in, num_classes, after_hidden=True))  # (B, classes)
    return nn.Sequential(*layers)


def _conv_block(cfg: ModelConfig, c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=_uses_bias(cfg.norm)),
        get_norm_layer(cfg.norm, c_out, spatial=True, groups=cfg.groups),
        get_activation(cfg.activation),
    ]
    if cfg.dropout_conv and cfg.dropout > 0:
        layers.append(Dropout(cfg.dropout, channel=True, rule=cfg.dropout_rule))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


def build_cnn(cfg: ModelConfig, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``depth`` conv blocks with channels ``width * 2**i``, global average pooling, FC head.

    Each block is conv3x3 -> norm -> activation -> (channel dropout) -> (2x2 max-pool while the map
    is at least :data:`MIN_POOL_SIZE`). Global average pooling makes the head independent of
    the input size (8x8 digits and 32x32 CIFAR alike). The head is
    Linear(fc_width) -> activation -> dropout -> Linear(num_classes).
    """
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for i in range(cfg.depth):
        c_out = cfg.width * 2**i
        pool = min(h, w) >= MIN_POOL_SIZE
        layers += _conv_block(cfg, c, c_out, pool)  # (B, c_out, h, w)
        c, h, w = c_out, (h // 2 if pool else h), (w // 2 if pool else w)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, C)
    layers += [nn.Linear(c, cfg.fc_width), get_activation(cfg.activation), *_fc_dropout(cfg)]
    layers.append(_linear(cfg, cfg.fc_width, num_classes, after_hidden=True))  # (B, classes)
    return nn.Sequential(*layers)


MODELS = {"mlp": build_mlp, "cnn": build_cnn}
"""Architecture name -> builder."""


def build_model(cfg: ModelConfig, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the network ``cfg.arch`` for images of shape ``in_shape`` = (C, H, W).

    Args:
        cfg: architecture, width, depth, activation, normalization and dropout settings.
        in_shape: (C, H, W) of one input image.
        num_classes: outputs of the classifier (logits).

    Returns:
        A module mapping (B, C, H, W) images to (B, num_classes) logits, on the CPU.
    """
    return MODELS[cfg.arch](cfg, in_shape, num_classes)
