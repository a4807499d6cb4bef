"""What a running sweep reports, and to whom.

The sweep driver (a Ray job, see :mod:`workers.driver`) reports every trial's progress to a
:class:`SweepSink` as it happens. The service implements the sink with its database, so the API
can show progress without asking Ray or MLflow; the dependency still points service -> workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

TrialStatus = Literal[
    "pending",  # created, not yet started
    "running",
    "completed",  # ran all its epochs
    "stopped",  # stopped early by the scheduler (ASHA, median): a normal, final outcome
    "diverged",  # NaN or infinite loss; never the best trial
    "failed",  # raised, or its worker died more often than max_failures allows
    "cancelled",  # the sweep was cancelled while the trial was pending or running
]
TRIAL_STATUSES: tuple[TrialStatus, ...] = get_args(TrialStatus)
FINAL_TRIAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "stopped", "diverged", "failed", "cancelled"}
)

SweepStatus = Literal["pending", "running", "cancelling", "completed", "failed", "cancelled"]
FINAL_SWEEP_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
SAMPLES_ARTIFACT = "augmented_samples.png"
"""Where a trial's augmentation picture (training images before and after) goes among its
MLflow run's artifacts; the sink stores it under this path."""


def trial_key(number: int) -> str:
    """The unique key of trial ``number`` in its sweep: its row's and its MLflow run's."""
    return f"trial-{number:05d}"


NOT_BEST: frozenset[str] = frozenset({"diverged", "failed"})
"""Trials that are never a sweep's best, whatever they reported."""


def best_number(
    candidates: Iterable[tuple[int, str, float | None]], mode: Literal["max", "min"]
) -> int | None:
    """The best trial of ``(number, status, value)`` candidates: the best finite ``value``
    (the sweep metric at the trial's last reported epoch) in ``mode``'s direction among trials
    not in :data:`NOT_BEST`; on a tie the lowest number. None when none counts.

    The one rule for "best": the driver (and so retention), the API and MLflow's tags use it.
    """
    sign = 1.0 if mode == "max" else -1.0
    ranked = [
        (sign * value, -number)
        for number, status, value in candidates
        if status not in NOT_BEST and value is not None and math.isfinite(value)
    ]
    return -max(ranked)[1] if ranked else None


def finite_metrics(
    values: Mapping[str, Any], names: Iterable[str] | None = None
) -> dict[str, float]:
    """The finite numbers of ``values`` (only those in ``names`` when given), as floats.

    Metrics cross JSON (Tune's results, the database, responses), which has no NaN or infinity.
    """
    keys = values.keys() if names is None else [n for n in names if n in values]
    return {
        str(k): float(values[k])
        for k in keys
        if isinstance(values[k], int | float)
        and not isinstance(values[k], bool)
        and math.isfinite(values[k])
    }


@dataclass(frozen=True)
class TrialUpdate:
    """A trial's new state.

    Attributes:
        number: the trial's number (1-based, unique in the sweep): its identity everywhere.
        status: the new status.
        params: the trial's sampled parameters (dotted names), sent with the first update.
        run_name: the name of the trial's MLflow run, sent with the first update.
        config: the trial's whole configuration (dotted names), its MLflow run's parameters,
            sent with the first update.
        message: why it ended (error text, divergence epoch), empty otherwise.
        attempt: how many times the trial has been (re)started.
        pack: the pack the trial trains in (its pack's Tune trial id).
    """

    number: int
    status: TrialStatus
    params: dict[str, Any] = field(default_factory=dict)
    run_name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    attempt: int = 0
    pack: str = ""


@dataclass(frozen=True)
class TrialOutcome:
    """What the sink holds of one trial: what a resumed driver starts from.

    Attributes:
        number: the trial's number.
        params: its sampled parameters.
        status: its status (a final one is never changed again).
        epoch: its last stored epoch (0: none).
        curve: the sweep metric per stored epoch where it was finite.
    """

    number: int
    params: dict[str, Any]
    status: TrialStatus
    epoch: int = 0
    curve: dict[int, float] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        """The metric at the last stored epoch, if finite there."""
        return self.curve.get(self.epoch)


class SweepSink(Protocol):
    """Receives a sweep's progress from its driver.

    Contract: the reports (every method but :meth:`cancel_requested`) come in order, one at a
    time, though not all from the same thread: while Tune runs, the driver makes them from its
    outbox's thread (:mod:`workers.driver.outbox`). :meth:`cancel_requested` comes from Tune's
    controller thread and may overlap a report. Every method is idempotent (a resumed driver
    may repeat an epoch or a status it sent before the restart) and must not raise for a
    repeated call. A final trial status is never replaced by a non-final one. A method that
    raises :class:`~workers.errors.SinkUnavailableError` may be called again later (the
    driver retries for a while); any other error fails the sweep.
    """

    def sweep_started(self, experiment_path: str) -> None:
        """The driver is running (again, after a resume); Tune's experiment directory."""

    def trials(self, metric: str) -> list[TrialOutcome]:
        """Every trial stored so far, in number order, with its curve of ``metric``: a
        (resumed) driver takes final statuses and the search's history from here."""

    def trial_updated(self, update: TrialUpdate) -> None:
        """A trial was created, started, restarted or ended."""

    def epoch_reported(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        """A trial finished an epoch; ``metrics`` are finite floats keyed by metric name."""

    def artifact_reported(self, number: int, path: str, content: bytes) -> None:
        """A file for the trial's MLflow run at ``path`` (a trial sends each once; a repeat
        keeps the first). It comes before the epoch it came with, in the same batch or an
        earlier one, so a stored epoch has its artifacts stored."""

    def sweep_ended(self, status: SweepStatus, message: str, best: int | None) -> None:
        """The sweep reached a final status; ``best`` is the number of its best trial
        (:func:`best_number`), None when no trial counts."""

    def cancel_requested(self) -> bool:
        """Whether a user asked to cancel the sweep (polled by the driver)."""

    def batch(self) -> AbstractContextManager[None]:
        """A block whose reports form one unit: all of them are stored, or none.

        The driver writes behind Tune and sends what queued up meanwhile in one block (one
        database transaction). Reports made in the block come from the block's thread.
        """


KeepCheckpoints = Literal["best", "none", "all"]
"""What a final sweep leaves on storage: ``best``, the last checkpoint of its best trial;
``none``, nothing; ``all``, its experiment directory as Tune left it (every trial's newest
checkpoints and Tune's state)."""
