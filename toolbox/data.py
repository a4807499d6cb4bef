"""Data sets as device-resident tensors, loaded once per process.

Every loader returns images as float32 in [0, 1] with shape (N, C, H, W) and integer labels.
The split into training and validation is seeded, so every trial of a sweep sees the same split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from toolbox.config import DataConfig


@dataclass(frozen=True)
class DataSplit:
    """A data set split into training and validation tensors on one device.

    Attributes:
        train_x: (N, C, H, W) float32 images in [0, 1].
        train_y: (N,) int64 labels.
        val_x: (M, C, H, W) float32 images in [0, 1].
        val_y: (M,) int64 labels.
        num_classes: number of classes.
        name: data set name.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    name: str

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


RawData = tuple[np.ndarray, np.ndarray, int]
"""Images as uint8 or float array (N, C, H, W) scaled to [0, 1], labels (N,), class count."""


def _load_digits(cfg: DataConfig) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    return images, bunch.target.astype(np.int64), 10


LOADERS: dict[str, Callable[[DataConfig], RawData]] = {"digits": _load_digits}
"""Data set name -> loader returning all labelled images (the split happens afterwards)."""


def load_split(cfg: DataConfig, device: torch.device | str = "cpu") -> DataSplit:
    """Load ``cfg.dataset`` onto ``device`` and split it, reusing the per-process cache.

    Args:
        cfg: which data set and how to split it.
        device: where the tensors live; trials in one worker process share them.

    Returns:
        The training and validation tensors.

    Raises:
        toolbox.errors.DataUnavailableError: the data set is missing and cannot be downloaded.
    """
    return _cached_split(cfg, str(torch.device(device)))


@functools.lru_cache(maxsize=4)
def _cached_split(cfg: DataConfig, device: str) -> DataSplit:
    images, labels, num_classes = LOADERS[cfg.dataset](cfg)
    rng = np.random.default_rng(cfg.split_seed)
    order = rng.permutation(len(labels))
    n_val = max(1, int(round(len(labels) * cfg.val_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]

    def to_device(a: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a[idx])).to(device)

    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    return DataSplit(
        train_x=to_device(x, train_idx),
        train_y=to_device(labels, train_idx),
        val_x=to_device(x, val_idx),
        val_y=to_device(labels, val_idx),
        num_classes=num_classes,
        name=cfg.dataset,
    )
