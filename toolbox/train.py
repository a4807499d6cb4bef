"""The training loop of one trial: seeded, resumable, with one device sync per epoch.

The whole data set lives on the device; each epoch shuffles it with a device generator, gathers
a few minibatches at a time, augments them there in one go, normalizes the inputs and takes one
SGD step per batch. Loss and accuracy accumulate on the device and are read once per epoch,
after evaluation. With ``measure_grad_noise``, running sums of the minibatch gradients give the
epoch's ``grad_noise`` too (see :mod:`toolbox.grad_noise`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from toolbox.config import TrialConfig
from toolbox.data import DataSplit, limit_train, load_split
from toolbox.errors import ConfigError
from toolbox.grad_noise import GradNoise
from toolbox.metrics import EpochMetrics
from toolbox.models import build_model
from toolbox.optim import build_optimizer
from toolbox.preprocess import InputNormalizer

EVAL_BATCH_SIZE = 2048
"""Evaluation needs no gradients, so it can use batches much larger than training."""
AUGMENT_AHEAD = 512
"""About how many training samples are gathered and augmented per augmenter call (whole batches,
at least one). Much of the augmenter's cost is per call (a hundred-odd small tensor ops, and
caches the training step left cold), so augmenting a few batches at once before their steps
saves most of it; each sample still draws its own transform (bench/RESULTS.md has the sizes
compared). Without augmentation, batches are gathered one at a time."""
CHECKPOINT_VERSION = 1
"""Format of the dicts that ``checkpoint()`` returns; ``resume=`` refuses other versions."""


Outcome = Literal["completed", "diverged"]
"""How a trial ended; a crash is an exception, not an outcome."""
Checkpoint = Callable[[], dict[str, Any]]
"""Returns a torch-serializable snapshot that ``train(resume=...)`` accepts."""
EpochCallback = Callable[[EpochMetrics, Checkpoint], None]
"""``on_epoch(metrics, checkpoint)``, called after every completed epoch."""


@dataclass
class TrainResult:
    """How a trial ended and its per-epoch curve.

    Attributes:
        outcome: ``completed`` after all epochs, ``diverged`` when the loss became NaN or
            infinite (the diverged epoch is not in ``history``).
        history: metrics of every completed epoch, in order (including resumed ones).
        message: why the trial diverged; empty when it completed.
    """

    outcome: Outcome
    history: list[EpochMetrics] = field(default_factory=list)
    message: str = ""

    @property
    def final(self) -> EpochMetrics | None:
        """The last completed epoch, or ``None`` when none completed."""
        return self.history[-1] if self.history else None

    def best(
        self, metric: str = "val_accuracy", mode: Literal["max", "min"] = "max"
    ) -> EpochMetrics | None:
        """The epoch with the highest (``max``) or lowest (``min``) value of ``metric``."""
        pick = max if mode == "max" else min
        return pick(self.history, key=lambda m: getattr(m, metric), default=None)


def resolve_device(name: str) -> torch.device:
    """Map a :data:`toolbox.config.DeviceName` to a device; ``auto`` prefers CUDA."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        # An explicit index, so a split already on "cuda:0" compares equal and is not copied.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously; the clock is only meaningful after they finish.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _on_device(split: DataSplit, device: torch.device) -> DataSplit:
    if split.train_x.device == device:
        return split
    tensors = ("train_x", "train_y", "val_x", "val_y")
    return dataclasses.replace(split, **{k: getattr(split, k).to(device) for k in tensors})


def _augmenter(config: TrialConfig) -> Callable[..., torch.Tensor] | None:
    if not config.augment.enabled:
        return None
    # Imported here so training without augmentation never depends on the augment module.
    from toolbox.augment import Augmenter

    return Augmenter(config.augment)


@torch.no_grad()
def evaluate_sums(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: InputNormalizer,
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and correct count of ``model`` on (x, y), in eval mode.

    The sums stay on the device (no synchronization); divide by ``len(y)`` for means. The
    model is left in eval mode; the caller switches it back to training.

    Args:
        model: the network.
        x: (N, C, H, W) images in [0, 1].
        y: (N,) labels.
        normalize: the input normalization used in training.
        batch_size: evaluation batch size.

    Returns:
        (loss sum, correct count) as 0-dim device tensors.
    """
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(normalize(xb))  # (B, classes)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum, correct


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: DataSplit,
    normalize: InputNormalizer,
    augment: Callable[..., torch.Tensor] | None,
    generator: torch.Generator,
    batch_size: int,
    grad_noise: GradNoise | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the freshly shuffled training split; one SGD step per minibatch.

    The minibatches are those of the shuffled order; with ``augment``, they are gathered and
    augmented :data:`AUGMENT_AHEAD` samples at a time, then stepped through one by one. With
    ``grad_noise``, every minibatch's gradient is added to its sums before the step.

    Returns:
        (summed training loss, correct count) as 0-dim device tensors, not synchronized.
    """
    model.train()
    x_all, y_all = split.train_x, split.train_y
    n = len(y_all)
    order = torch.randperm(n, generator=generator, device=x_all.device)
    loss_sum = torch.zeros((), device=x_all.device)
    correct = torch.zeros((), device=x_all.device, dtype=torch.long)
    # Without an augmenter there is no per-call cost to spread, and a batch gathered right before
    # its step is still in cache.
    ahead = batch_size if augment is None else max(1, AUGMENT_AHEAD // batch_size) * batch_size
    for first in range(0, n, ahead):
        idx = order[first : first + ahead]
        xs, ys = x_all.index_select(0, idx), y_all.index_select(0, idx)  # (A, C, H, W), (A,)
        if augment is not None:
            xs = augment(xs, generator=generator, inplace=True)  # xs is ours to overwrite
        for start in range(0, len(idx), batch_size):
            x, y = xs[start : start + batch_size], ys[start : start + batch_size]  # (B, ...)
            logits = model(normalize(x))  # (B, classes)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if grad_noise is not None:
                grad_noise.add()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(dim=1) == y).sum()
    return loss_sum, correct


@dataclass
class _State:
    """Everything a checkpoint captures, so that resuming continues the exact same run."""

    config: TrialConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    normalize: InputNormalizer
    generator: torch.Generator
    history: list[EpochMetrics]

    def checkpoint(self) -> dict[str, Any]:
        """A torch-serializable snapshot; deep copies, so later training cannot change it."""
        device = self.generator.device
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": len(self.history),
            "config": self.config.model_dump(mode="json"),
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "normalizer": self.normalize.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "generator": self.generator.get_state(),
            },
            "history": [m.as_dict() for m in self.history],
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Load a snapshot taken by :meth:`checkpoint`."""
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(
                f"resume: checkpoint version {ckpt.get('version')!r} is not {CHECKPOINT_VERSION}"
            )
        device = self.generator.device
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.normalize = InputNormalizer.from_state_dict(ckpt["normalizer"], device)
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
        self.generator.set_state(rng["generator"].cpu())
        self.history = [EpochMetrics(**m) for m in ckpt["history"]]


def _all_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def divergence_message(epoch: int, train_loss: float, val_loss: float) -> str:
    """Why a trial diverged at ``epoch``, given the epoch's mean losses (one is non-finite)."""
    return (
        f"diverged at epoch {epoch}: the loss became non-finite "
        f"(train_loss={train_loss}, val_loss={val_loss}); lower optim.lr or add normalization"
    )


def train(
    config: TrialConfig,
    on_epoch: EpochCallback | None = None,
    resume: dict[str, Any] | None = None,
    data: DataSplit | None = None,
) -> TrainResult:
    """Train one trial and return its outcome and per-epoch curve.

    The same config (and seed) gives the same curve on the CPU: ``torch.manual_seed(seed)``
    drives initialization and dropout (it reseeds torch's global generators), and a device
    generator seeded with ``seed`` drives shuffling and augmentation.

    Args:
        config: the trial.
        on_epoch: called after every completed epoch with its metrics and a function that
            returns a checkpoint; may raise to stop training (the exception propagates).
        resume: a checkpoint from ``on_epoch``; training continues after its epoch and the
            returned history includes the epochs before it.
        data: a prepared split (``data.train_size`` applies to it too); by default
            ``load_split(config.data, device)``.

    Returns:
        ``completed`` with every epoch, or ``diverged`` when a loss became NaN or infinite
        (with a message naming the epoch; that epoch's metrics are not reported).

    Raises:
        toolbox.errors.DataUnavailableError: the data set cannot be loaded.
        toolbox.errors.ConfigError: ``resume`` is not a checkpoint of this version, or
            ``data.train_size`` exceeds the training split.
    """
    device = resolve_device(config.device)
    if data is None:
        split = load_split(config.data, device)
    else:
        split = _on_device(limit_train(data, config.data.train_size), device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, split.in_shape, split.num_classes).to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    state = _State(
        config=config,
        model=model,
        optimizer=build_optimizer(model, config.optim),
        normalize=InputNormalizer.fit(config.input_norm, split.train_x),
        generator=generator,
        history=[],
    )
    if resume is not None:
        state.restore(resume)
    augment = _augmenter(config)
    n_train, n_val = len(split.train_y), len(split.val_y)

    for epoch in range(len(state.history) + 1, config.epochs + 1):
        _synchronize(device)
        t0 = time.perf_counter()
        noise = GradNoise(model.parameters()) if config.measure_grad_noise else None
        train_sums = train_epoch(
            model, state.optimizer, split, state.normalize, augment, generator,
            config.optim.batch_size, noise,
        )  # fmt: skip
        _synchronize(device)
        train_seconds = time.perf_counter() - t0
        val_sums = evaluate_sums(model, split.val_x, split.val_y, state.normalize)
        noise_value = noise.value() if noise is not None else None
        # The one host-device synchronization of the epoch.
        train_loss, train_correct, val_loss, val_correct, *grad_noise = torch.stack(
            [*train_sums, *val_sums, *([] if noise_value is None else [noise_value])]
        ).tolist()
        epoch_seconds = time.perf_counter() - t0
        if not _all_finite(train_loss, val_loss):
            message = divergence_message(epoch, train_loss / n_train, val_loss / n_val)
            return TrainResult("diverged", state.history, message)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss / n_train,
            train_accuracy=train_correct / n_train,
            val_loss=val_loss / n_val,
            val_accuracy=val_correct / n_val,
            epoch_seconds=epoch_seconds,
            samples_per_second=n_train / train_seconds,
            grad_noise=grad_noise[0] if grad_noise else None,
        )
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, state.checkpoint)
    return TrainResult("completed", state.history)
