"""Input normalization: map [0, 1] images to the scale the network trains on.

An :class:`InputNormalizer` is fitted once on the training split (only ``standardize`` needs
statistics from it) and then applied to every batch on the device, in training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import torch

from toolbox.config import InputNorm
from toolbox.errors import ConfigError

EPS = 1e-6
"""Floor of a standard deviation, so a constant channel or image does not divide by zero."""


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Return ``(x - mean) / std`` with ``mean`` and ``std`` broadcast against ``x``."""
    return (x - mean) / std


def per_instance(x: torch.Tensor) -> torch.Tensor:
    """Give every sample of ``x`` (B, C, H, W) zero mean and unit variance over (C, H, W)."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    std = x.std(dim=dims, keepdim=True, unbiased=False).clamp_min(EPS)
    return (x - mean) / std


@dataclass(frozen=True)
class InputNormalizer:
    """One input normalization mode with the statistics it needs.

    Attributes:
        mode: the :data:`toolbox.config.InputNorm` mode.
        mean: (1, C, 1, 1) per-channel shift, or ``None`` when the mode needs no statistics.
        std: (1, C, 1, 1) per-channel scale, or ``None`` when the mode needs no statistics.
    """

    mode: InputNorm
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @classmethod
    def fit(cls, mode: InputNorm, train_x: torch.Tensor) -> InputNormalizer:
        """Fit ``mode`` on the training images ``train_x`` (N, C, H, W) in [0, 1].

        Only ``standardize`` reads ``train_x``: per-channel mean and standard deviation over
        (N, H, W), computed on the training split so validation data never leaks into them.

        Raises:
            toolbox.errors.ConfigError: ``mode`` is not an input normalization mode.
        """
        if mode not in get_args(InputNorm):
            raise ConfigError(f"input_norm={mode!r} is not one of {get_args(InputNorm)}")
        if mode != "standardize":
            return cls(mode)
        # float64 sums: a channel of 50k CIFAR images would lose digits in float32.
        x = train_x.double()
        mean = x.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(EPS)
        return cls(mode, mean.to(train_x.dtype), std.to(train_x.dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize a batch ``x`` (B, C, H, W) in [0, 1]; returns the same shape."""
        if self.mode in ("none", "unit"):
            return x  # the data sets already deliver [0, 1]
        if self.mode == "symmetric":
            return x * 2.0 - 1.0
        if self.mode == "per_instance":
            return per_instance(x)
        assert self.mean is not None and self.std is not None, "standardize without fit()"
        return standardize(x, self.mean, self.std)

    def state_dict(self) -> dict[str, Any]:
        """Return the mode and statistics as a torch-serializable dict."""
        return {"mode": self.mode, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str | None = None
    ) -> InputNormalizer:
        """Rebuild a normalizer saved by :meth:`state_dict`, moving statistics to ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return cls(state["mode"], move(state["mean"]), move(state["std"]))
