"""Benchmark: the toolbox training path with every augmentation on, against two baselines.

All three train the toolbox's own small CNN on synthetic CIFAR-shaped data (3x32x32, 10 classes)
in the same process:

- ``toolbox``: :func:`toolbox.train.train` with every augmentation switched on; the data lives
  on the device and :class:`toolbox.augment.Augmenter` draws a transform per sample there,
  for :data:`toolbox.train.AUGMENT_AHEAD` samples (a few batches) per call.
- ``plain DataLoader``: the usual PyTorch way, a ``Dataset`` applying torchvision v2 transforms
  sample by sample, batched by a ``DataLoader`` (``num_workers`` 0 and 2), feeding the same
  model, optimizer and step.
- ``no augmentation``: :func:`toolbox.train.train` with augmentation off, the compute limit.

Throughput is training samples per second (training time only), the median over measured
rounds of one epoch per path, run round-robin (in a random order each round) after warm-up rounds.
CUDA is used when present.
Run: ``python bench/bench_train_path.py [--n-train N] [--rounds R] [--workers 0 2]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from toolbox.config import AugmentConfig, ModelConfig, OptimConfig, TrialConfig
from toolbox.data import DataSplit
from toolbox.models import build_model
from toolbox.optim import build_optimizer
from toolbox.preprocess import InputNormalizer
from toolbox.train import AUGMENT_AHEAD, train

AUGMENT = AugmentConfig(
    hflip_p=0.5,
    vflip_p=0.5,
    affine_p=0.5,
    rotate_deg=15.0,
    translate=0.1,
    scale=0.1,
    shear_deg=10.0,
    color_p=0.5,
    brightness=0.3,
    contrast=0.3,
    saturation=0.3,
    hue=0.05,
    channel_shuffle_p=0.1,
    invert_p=0.1,
    noise_std=0.03,
)
OURS, PLAIN, LIMIT = "toolbox (all augmentations)", "plain DataLoader + v2", "no augmentation"
MODEL = ModelConfig(arch="cnn", width=16, depth=2, fc_width=64)
OPTIM = OptimConfig(lr=0.05, momentum=0.9, batch_size=128)


def plain_transforms(a: AugmentConfig) -> v2.Compose:
    """The same augmentations as torchvision v2 transforms, applied to one sample at a time."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(a.hflip_p),
            v2.RandomVerticalFlip(a.vflip_p),
            v2.RandomApply(
                [
                    v2.RandomAffine(
                        degrees=a.rotate_deg,
                        translate=(a.translate, a.translate),
                        scale=(1 - a.scale, 1 + a.scale),
                        shear=a.shear_deg,
                        interpolation=InterpolationMode.BILINEAR,
                    )
                ],
                p=a.affine_p,
            ),
            v2.RandomApply(
                [v2.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue)], p=a.color_p
            ),
            v2.RandomApply([v2.RandomChannelPermutation()], p=a.channel_shuffle_p),
            v2.RandomInvert(a.invert_p),
            v2.GaussianNoise(sigma=a.noise_std, clip=False),
        ]
    )


class AugmentedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """CPU images (N, C, H, W) in [0, 1] with labels, transformed on access."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: v2.Compose) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def synthetic_split(n_train: int, n_val: int, device: torch.device) -> DataSplit:
    """Uniform random 3x32x32 images with random labels: throughput does not need real data."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train + n_val, 3, 32, 32, generator=g)  # (N, 3, 32, 32)
    y = torch.randint(0, 10, (n_train + n_val,), generator=g)
    return DataSplit(
        x[:n_train].to(device), y[:n_train].to(device),
        x[n_train:].to(device), y[n_train:].to(device), 10, "synthetic",
    )  # fmt: skip


def toolbox_epoch(split: DataSplit, augment: AugmentConfig) -> Callable[[], float]:
    """One epoch of the real toolbox training loop; returns its samples/s."""
    device = "cuda" if split.train_x.is_cuda else "cpu"
    cfg = TrialConfig(augment=augment, model=MODEL, optim=OPTIM, epochs=1, device=device)
    return lambda: train(cfg, data=split).history[0].samples_per_second


def plain_epoch(split: DataSplit, workers: int) -> Callable[[], float]:
    """One epoch of the same model and step fed by a per-sample v2 Dataset and a DataLoader."""
    device = split.train_x.device
    torch.manual_seed(0)
    model = build_model(MODEL, split.in_shape, split.num_classes).to(device)
    optimizer = build_optimizer(model, OPTIM)
    normalize = InputNormalizer.fit("standardize", split.train_x)
    data = AugmentedImages(split.train_x.cpu(), split.train_y.cpu(), plain_transforms(AUGMENT))
    loader = DataLoader(
        data,
        batch_size=OPTIM.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def epoch() -> float:
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in loader:
            x, y = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(normalize(x)), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return len(data) / (time.perf_counter() - t0)

    return epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run the paths round-robin and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, help="default: 10000 on a GPU, 1280 on the CPU")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds")
    parser.add_argument("--rounds", type=int, default=5, help="measured epochs per path")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_train = args.n_train or (10_000 if device.type == "cuda" else 1280)
    split = synthetic_split(n_train, 512, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={name} torch_threads={torch.get_num_threads()} n_train={n_train} "
        f"batch={OPTIM.batch_size} augment_ahead={AUGMENT_AHEAD} model={MODEL.arch} "
        f"width={MODEL.width} depth={MODEL.depth} "
        f"warmup_rounds={args.warmup} measured_rounds={args.rounds} "
        f"load_average_1min={os.getloadavg()[0]:.1f} cpus={os.cpu_count()}"
    )
    paths = {OURS: toolbox_epoch(split, AUGMENT)}
    for workers in args.workers:
        paths[f"{PLAIN}, workers={workers}"] = plain_epoch(split, workers)
    paths[LIMIT] = toolbox_epoch(split, AugmentConfig())
    # Round-robin, one epoch per path per round: on a shared machine, load that comes and
    # goes then hits every path alike instead of whichever ran during the busy minute. Each
    # round runs the paths in a new random order, so that no path always follows the same one
    # (in a fixed order, two identical paths measured up to 3% apart here).
    start = time.perf_counter()
    rows: dict[str, list[float]] = {k: [] for k in paths}
    names, shuffler = list(paths), random.Random(0)
    for r in range(args.warmup + args.rounds):
        rates = {k: paths[k]() for k in shuffler.sample(names, len(names))}
        rates = {k: rates[k] for k in names}  # printed in the table's order
        label = "warm-up" if r < args.warmup else "measured"
        print(f"round {r} ({label}): " + ", ".join(f"{v:.0f}" for v in rates.values()))
        for k, v in rates.items():
            if r >= args.warmup:
                rows[k].append(v)
    print_table(rows)
    print(f"total {time.perf_counter() - start:.0f} s, load_average_1min={os.getloadavg()[0]:.1f}")


def print_table(rows: dict[str, list[float]]) -> None:
    """Median samples/s per path, and our ratio to the best plain path and to the limit."""
    med = {k: statistics.median(v) for k, v in rows.items()}
    ours, limit = med[OURS], med[LIMIT]
    plain = max(v for k, v in med.items() if k.startswith(PLAIN))
    print(f"{'path':42s} {'samples/s (median)':>18s}  per-epoch")
    for k, v in med.items():
        runs = ", ".join(f"{r:.0f}" for r in rows[k])
        print(f"{k:42s} {v:18.0f}  [{runs}]")
    print(f"ours / best plain DataLoader: {ours / plain:.2f}x   ours / no-aug: {ours / limit:.2f}x")
    # Each round runs every path once, back to back, so a ratio within a round cancels the
    # machine's drift between rounds.
    by_round = [o / n for o, n in zip(rows[OURS], rows[LIMIT], strict=True)]
    print(
        f"ours / no-aug by round: median {statistics.median(by_round):.2f}x  "
        f"[{', '.join(f'{r:.2f}' for r in by_round)}]"
    )


if __name__ == "__main__":
    main()
