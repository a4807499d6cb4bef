"""What a training epoch measures: :class:`EpochMetrics` and the metric names it defines.

Free of torch, so the layers above can name metrics without importing the training code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured. Field names are the metric names a sweep refers to.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean cross-entropy over the epoch's training batches (in training mode,
            with augmentation and dropout, as the weights changed).
        train_accuracy: share of training samples classified correctly during the epoch.
        val_loss: mean cross-entropy on the validation split after the epoch, in eval mode.
        val_accuracy: share of validation samples classified correctly after the epoch.
        epoch_seconds: wall time of the epoch, training plus evaluation.
        samples_per_second: training samples divided by the training time alone.
        grad_noise: how far the epoch's minibatch gradients (of the loss, taken before each
            step) spread around their mean: the square root of their mean squared Euclidean
            distance from it, with Bessel's correction over the epoch's batches. It falls
            like 1 / sqrt(batch size). Measured with ``measure_grad_noise`` and at least two
            batches; otherwise ``None``, a metric the epoch does not report.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    epoch_seconds: float
    samples_per_second: float
    grad_noise: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Return ``{field name: value}``, including ``epoch`` and unmeasured (``None``) ones."""
        return dataclasses.asdict(self)


METRIC_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(EpochMetrics) if f.name != "epoch"
)
"""The names a sweep's metric and the trials' reports use: every field but ``epoch``. A trial
reports only the measured ones (finite numbers, see ``workers.events.finite_metrics``)."""
