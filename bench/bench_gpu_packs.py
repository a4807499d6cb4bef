"""Benchmark (GPU): small CIFAR-shaped CNN trials, packed against one at a time and against
fractional-GPU Ray Tune trials, in trials per hour. One call, a few minutes on one GPU.

``--trials`` (64) configurations of the toolbox's CNN (width 16, depth 2, head 64, batch 128;
a learning-rate x momentum grid, one seed each) for ``--epochs`` epochs on CIFAR-10 files
written in the real format with random pixels (``--train`` images; no download), three ways:

- ``one at a time``: :func:`toolbox.train.train` for the first ``--sample`` trials, one after
  another in this process (the GPU holds one small model at a time);
- ``packed``: :func:`toolbox.packed.train_pack` over all trials, in packs of the size the
  service's probe picks on this device (:mod:`workers.trial.probe`);
- ``tune fractional``: Ray Tune over the trainable a plain Tune user would write
  (:func:`plain_tune.train_one`: the same training, a checkpoint every epoch) for ``--sample``
  trials with ``--share`` of the GPU each (1/share trials at once, each its own process and
  CUDA context), unpacked.

Prints the card, each mode's trials per hour and the ratios (target: packed >= 4x the better
of the others). On a machine without CUDA it runs on the CPU with ``--smoke`` sizes, to check
the script. Run: ``python bench/bench_gpu_packs.py [--trials 64] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolbox.config import TrialConfig
from toolbox.packed import train_pack
from toolbox.train import train
from workers.trial.probe import best_size, measure

SHAPE = {"model.arch": "cnn", "model.width": 16, "model.depth": 2, "model.fc_width": 64}


def write_cifar(root: Path, train_images: int) -> None:
    """CIFAR-10's python batches with random pixels: 5 training batches and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = max(1, train_images // 5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per).tolist()
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": []}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def configs(n: int, epochs: int, device: str, data_dir: Path) -> list[TrialConfig]:
    return [
        TrialConfig.from_flat(
            {
                **SHAPE,
                "data.dataset": "cifar10",
                "data.data_dir": str(data_dir),
                "data.download": False,
                "optim.lr": 0.005 * 2 ** (i % 4),
                "optim.momentum": 0.9 if (i // 4) % 2 else 0.5,
                "optim.batch_size": 128,
                "seed": i,
                "epochs": epochs,
                "device": device,
            }
        )
        for i in range(n)
    ]


def per_hour(trials: int, seconds: float) -> float:
    return trials * 3600.0 / seconds


def one_at_a_time(cfgs: list[TrialConfig]) -> float:
    t0 = time.perf_counter()
    for cfg in cfgs:
        train(cfg)
    return per_hour(len(cfgs), time.perf_counter() - t0)


def packed(cfgs: list[TrialConfig], size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(cfgs), size):
        train_pack(cfgs[i : i + size])
    return per_hour(len(cfgs), time.perf_counter() - t0)


def tune_fractional(cfgs: list[TrialConfig], share: float, device: str) -> float:
    """A plain Tune trainable (one trial at a time each), ``share`` of the GPU per trial."""
    import ray
    from plain_tune import trainable
    from ray import tune

    gpus = 1 if device == "cuda" else 0
    ray.init(num_cpus=max(2, int(1 / share)), num_gpus=gpus, log_to_driver=False)
    try:
        fn = trainable(cfgs[0], cpus=1, gpus=share if gpus else 0.0)
        space = {
            "optim.lr": tune.grid_search([c.optim.lr for c in cfgs]),
        }
        with tempfile.TemporaryDirectory() as storage:
            tuner = tune.Tuner(
                fn,
                param_space=space,
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(storage_path=storage, verbose=0),
            )
            t0 = time.perf_counter()
            grid = tuner.fit()
            seconds = time.perf_counter() - t0
        if grid.num_errors:
            raise RuntimeError(f"{grid.num_errors} Tune trials failed")
        return per_hour(len(cfgs), seconds)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--sample", type=int, default=16, help="trials of the slow modes")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=10000, help="training images")
    parser.add_argument("--share", type=float, default=0.125, help="GPU share of a Tune trial")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke or device == "cpu":
        args.trials, args.sample, args.epochs, args.train = 8, 4, 1, 1000
    card = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU (CPU smoke run)"
    print(f"device: {card}; torch {torch.__version__}; {args.trials} trials x {args.epochs} "
          f"epochs, {args.train} CIFAR-shaped images")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-packs-") as tmp:
        data_dir = Path(tmp)
        write_cifar(data_dir, args.train)
        cfgs = configs(args.trials, args.epochs, device, data_dir)
        throughput = measure(cfgs[0])
        size = best_size(throughput)
        shown = ", ".join(f"K={k}: {v:.0f}" for k, v in throughput.items())
        print(f"probe (member-samples/s): {shown} -> packs of {size}", flush=True)
        train(cfgs[0])  # warm-up: CUDA context, kernels, data cache
        rates: dict[str, Any] = {}
        rates["one at a time"] = one_at_a_time(cfgs[: args.sample])
        print(f"one at a time: {rates['one at a time']:.0f} trials/h", flush=True)
        rates["packed"] = packed(cfgs, size)
        print(f"packed: {rates['packed']:.0f} trials/h", flush=True)
        rates["tune fractional"] = tune_fractional(cfgs[: args.sample], args.share, device)
        print(f"tune fractional ({args.share} GPU each): {rates['tune fractional']:.0f} trials/h")
    best_other = max(rates["one at a time"], rates["tune fractional"])
    ratio = rates["packed"] / best_other
    print(f"packed / one at a time   {rates['packed'] / rates['one at a time']:.2f}x")
    print(f"packed / tune fractional {rates['packed'] / rates['tune fractional']:.2f}x")
    print(f"packed / best other      {ratio:.2f}x  target >= 4 {'ok' if ratio >= 4 else 'MISSED'}")


if __name__ == "__main__":
    main()
