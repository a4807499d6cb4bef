"""Benchmark: K trials trained as one pack against the same K trained one after another.

Two workloads, each in one process on the same data:

- ``digits MLP``: the lecture's small study, an MLP 64x2 on scikit-learn's digits (1,437
  training images of 8x8), batch 128.
- ``CIFAR-shaped CNN``: the toolbox's CNN (width 16, depth 2, head 64), batch 128, on uniform
  random 3x32x32 images with random labels (``bench_train_path.synthetic_split``; throughput
  needs no real data), ``--cnn-train`` training and ``--cnn-val`` validation images.

For each K in ``--ks``, K members differing in learning rate, momentum and seed are trained
for ``--epochs`` epochs with :func:`toolbox.packed.train_pack` and, one after another, with
:func:`toolbox.train.train`; both include building the models and every epoch's evaluation.
The table gives member-epochs per second (K x epochs / wall time), the best of ``--rounds``
rounds (sequential and packed alternate within a round, so a busy machine slows both), and
their ratio. On the CPU a second table times one conv layer of K=8 members both ways the
packed layers can run it (see ``toolbox.packed.layers``). torch uses ``--threads`` threads
(default 1, as a Ray trial of one CPU does; it also keeps a shared machine's other load from
stalling torch's thread pool). CUDA is used when present.
Run: ``python bench/bench_packed.py [--ks 1 2 4] [--rounds 3] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_train_path import synthetic_split

from toolbox.config import TrialConfig
from toolbox.data import DataSplit, load_split
from toolbox.packed import train_pack
from toolbox.train import resolve_device, train

KS = (1, 2, 4, 8, 16, 32)
MLP = {"model.arch": "mlp", "model.width": 64, "model.depth": 2}
CNN = {"model.arch": "cnn", "model.width": 16, "model.depth": 2, "model.fc_width": 64}


def members(shape: dict[str, object], k: int, epochs: int, device: str) -> list[TrialConfig]:
    """K trials of ``shape``: a learning-rate grid over two momenta, one seed each."""
    return [
        TrialConfig.from_flat(
            {
                **shape,
                "optim.lr": 0.01 * 2 ** (i % 4),
                "optim.momentum": 0.9 if i % 8 < 4 else 0.5,
                "optim.batch_size": 128,
                "seed": i,
                "epochs": epochs,
                "device": device,
            }
        )
        for i in range(k)
    ]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def timed(run: Callable[[], object]) -> float:
    """Wall seconds of ``run()``, CUDA work included."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(cfgs: list[TrialConfig], split: DataSplit, rounds: int) -> tuple[float, float]:
    """Best sequential and packed wall seconds over ``rounds`` alternating rounds."""
    sequential, packed = [], []
    for _ in range(rounds):
        sequential.append(timed(lambda: [train(c, data=split) for c in cfgs]))
        packed.append(timed(lambda: train_pack(cfgs, data=split)))
    return min(sequential), min(packed)


def conv_layouts(k: int, batch: int) -> None:
    """Forward and backward of the CNN's second conv (16 -> 32 channels, 16x16 maps) for K
    members: one grouped convolution over K*C channels against K ordinary ones."""
    import torch.nn.functional as F

    def step(x: torch.Tensor, w: torch.Tensor, groups: int) -> None:
        F.conv2d(x.requires_grad_(), w.requires_grad_(), padding=1, groups=groups).sum().backward()

    grouped = (torch.randn(batch, k * 16, 16, 16), torch.randn(k * 32, 16, 3, 3))
    single = [(torch.randn(batch, 16, 16, 16), torch.randn(32, 16, 3, 3)) for _ in range(k)]
    runs = {
        "one grouped convolution (B, K*C, H, W)": lambda: step(*grouped, k),
        "K ordinary convolutions, one member at a time": lambda: [step(x, w, 1) for x, w in single],
    }
    print(f"\n| conv 16->32 on 16x16, K={k}, batch {batch}, forward+backward | ms |")
    print("|---|---:|")
    for label, run in runs.items():
        run()
        print(f"| {label} | {1000 * min(timed(run) for _ in range(5)):.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cnn-train", type=int, default=2048)
    parser.add_argument("--cnn-val", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tables", nargs="+", choices=("training", "conv"), default=["training", "conv"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {device.type} ({name}), "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"{args.epochs} epochs, best of {args.rounds} rounds\n"
    )
    if "training" in args.tables:
        training(args, device)
    if "conv" in args.tables and device.type == "cpu":
        conv_layouts(8, 128)


def training(args: argparse.Namespace, device: torch.device) -> None:
    """The table of packed against sequential training (see the module)."""
    workloads = [
        ("digits MLP 64x2", MLP, load_split(TrialConfig().data, device)),
        ("CIFAR-shaped CNN", CNN, synthetic_split(args.cnn_train, args.cnn_val, device)),
    ]
    print("| workload | K | sequential member-epochs/s | packed member-epochs/s | packed / seq |")
    print("|---|---:|---:|---:|---:|")
    for label, shape, split in workloads:
        warm = members(shape, 2, 1, device.type)
        measure(warm, split, 1)  # first-call costs (kernels, caches) out of the table
        for k in args.ks:
            seq, packed = measure(members(shape, k, args.epochs, device.type), split, args.rounds)
            work = k * args.epochs
            print(
                f"| {label} | {k} | {work / seq:.1f} | {work / packed:.1f} | {seq / packed:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
