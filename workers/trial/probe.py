"""How many members a pack of one shape should hold on this device: measured, not guessed.

:func:`measure` trains packs of 1, 2, 4, ... copies of a configuration for a few minibatches
each on the trial's data and device, with the trial's threads, and records member-samples
per second (each size's fastest of :data:`REPEATS` passes); it stops growing the pack when the
device runs out of memory or one measurement takes longer than its budget. :func:`best_size`
picks the largest size whose throughput is within :data:`KEEP` of the best: a larger pack that
does not lose throughput still saves per-trial overhead (one worker, one checkpoint and one
Tune trial per pack). The driver runs this once per shape and device and caches the answer
(:mod:`workers.driver.probing`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from toolbox.config import TrialConfig
    from toolbox.packed import Pack
    from workers.trial.setup import TrialSetup

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
KEEP = 0.9
"""A size is kept while its throughput is at least this share of the best measured."""
STEPS = 4
"""Minibatches per measurement (after one of warm-up)."""
REPEATS = 3
"""Measurements per size; the fastest counts (a busy machine only ever slows one down)."""


def measure(config: TrialConfig, budget_s: float = 2.0) -> dict[int, float]:
    """Member-samples per second of packs of each size in :data:`CANDIDATES` (in order,
    until one does not fit or takes longer than ``budget_s``).

    Raises:
        toolbox.errors.DataUnavailableError: the configuration's data set cannot be loaded.
    """
    import torch

    from toolbox.data import limit_train, load_split
    from toolbox.packed import Pack
    from toolbox.train import resolve_device

    device = resolve_device(config.device)
    full = load_split(config.data, device)
    split = limit_train(full, min(len(full.train_y), config.optim.batch_size * (STEPS + 1)))
    config = config.model_copy(update={"data": config.data.model_copy(update={"train_size": None})})
    measured: dict[int, float] = {}
    for k in CANDIDATES:
        configs = [config.model_copy(update={"seed": config.seed + i}) for i in range(k)]
        try:
            pack = Pack(configs, data=split)
            pack.train_epoch(None)  # warm-up: allocation, kernels chosen
            seconds = min(_timed(pack, device) for _ in range(REPEATS))
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        measured[k] = k * len(split.train_y) / seconds
        if seconds > budget_s:
            break
    return measured


def _timed(pack: Pack, device: torch.device) -> float:
    """Seconds of one pass over the probe's split (the device synchronized)."""
    import torch

    start = time.perf_counter()
    pack.train_epoch(None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def best_size(throughput: dict[int, float]) -> int:
    """The largest measured size within :data:`KEEP` of the best throughput (1 if none)."""
    if not throughput:
        return 1
    best = max(throughput.values())
    return max(k for k, v in throughput.items() if v >= KEEP * best)


def probe_task(setup: TrialSetup, params: dict[str, Any]) -> dict[str, Any]:
    """The Ray task of the probe: the size for ``params`` (a member's parameters) with the
    sweep's ``setup``, and the throughputs measured (JSON-ready)."""
    import torch

    from workers.trial.setup import trial_config

    torch.set_num_threads(max(1, int(setup.cpus)))
    config = trial_config(setup, params)
    throughput = measure(config)
    return {
        "size": best_size(throughput),
        "throughput": {str(k): v for k, v in throughput.items()},
        "device": _device(config.device),
    }


def _device(device: str) -> str:
    """The probed device's model and memory, for the cache's readers."""
    import platform

    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"cpu {platform.processor() or platform.machine()}"
