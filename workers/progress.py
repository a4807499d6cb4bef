"""A running sweep's bookkeeping: each trial's state, forwarded to the sink and to MLflow.

:class:`SweepProgress` lives in the driver process and is fed by the Tune callback of
:mod:`workers.driver`, so every call comes from Tune's controller thread, in order, as the
:class:`~workers.events.SweepSink` contract requires.

Final statuses: a trial that reported every epoch is ``completed``; one Tune ended sooner
(ASHA, median rule) is ``stopped``; one that flagged divergence is ``diverged``; one that errored
past ``max_failures`` is ``failed``; one still pending or running when the sweep was cancelled
is ``cancelled``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from workers.events import FINAL_TRIAL_STATUSES, SweepSink, TrialStatus, TrialUpdate
from workers.outbox import Outbox
from workers.search import varied_keys
from workers.spec import METRIC_NAMES, SweepSpec
from workers.tracking import SweepTracker
from workers.trainable import DIVERGED, EPOCH


@dataclass
class TrialRecord:
    """What the driver knows of one trial."""

    key: str
    number: int
    params: dict[str, Any]
    status: TrialStatus = "pending"
    run_id: str | None = None  # written and read by the outbox's thread only, until it closes
    attempt: int = 0
    last_epoch: int = 0
    value: float | None = None  # the sweep metric at the last reported epoch
    message: str = ""
    history: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_TRIAL_STATUSES


class SweepProgress:
    """Trial records of one sweep, reported to ``sink`` and ``tracker`` as they change.

    A write that raises fails the sweep, as it did when writes were plain calls: the next
    event or :meth:`flush` raises :class:`~workers.outbox.OutboxError`, and the writes queued
    after the failed one are dropped. MLflow errors never get this far: the tracker retries,
    then logs and skips them.
    """

    def __init__(self, spec: SweepSpec, sink: SweepSink, tracker: SweepTracker) -> None:
        self.spec = spec
        self.sink = sink
        self.tracker = tracker
        self.trials: dict[str, TrialRecord] = {}
        self.cancelled = False
        self.snapshot_at = float("-inf")
        """``time.monotonic()`` of Tune's last experiment-state snapshot (the driver sets it)."""
        self.outbox = Outbox(f"sweep {tracker.sweep_id}")

    def flush(self) -> None:
        """Wait until every write queued so far is made.

        Raises:
            OutboxError: a write failed.
        """
        self.outbox.drain()

    def close(self) -> BaseException | None:
        """Make the queued writes, then write synchronously; the first failed write, if any."""
        return self.outbox.close()

    def seen(
        self, key: str, params: dict[str, Any], last_result: dict[str, Any] | None = None
    ) -> TrialRecord:
        """The record of trial ``key``; a new trial is reported as pending.

        ``last_result`` is what a trial restored from an earlier driver had reported: its last
        epoch counts, so a trial that had finished is judged completed, not stopped.
        """
        if key not in self.trials:
            rec = self.trials[key] = TrialRecord(key, trial_number(key), dict(params))
            if last_result and EPOCH in last_result and not last_result.get(DIVERGED):
                rec.last_epoch = int(last_result[EPOCH])
                rec.value = finite_metrics(last_result).get(self.spec.metric.name)
            self._update(rec)
        return self.trials[key]

    def started(self, key: str, params: dict[str, Any], attempt: int) -> None:
        """The trial (re)started; its child run opens on the first start."""
        rec = self.seen(key, params)
        if rec.final:
            return

        def open_run() -> None:  # on every start: a run MLflow could not open is tried again
            if rec.run_id is None:
                config = self.spec.trial_config(rec.params).flatten()
                rec.run_id = self.tracker.start_trial(key, self.run_name(rec), config)

        self.outbox.submit(open_run, f"open the MLflow run of {key}")
        rec.status, rec.attempt = "running", attempt
        self._update(rec)

    def restarting(self, key: str, attempt: int, message: str) -> None:
        """The trial's worker failed and Tune retries it from its last checkpoint."""
        rec = self.trials.get(key)
        if rec is None or rec.final:
            return
        rec.attempt, rec.message = attempt, message
        self._update(rec)

    def result(self, key: str, result: dict[str, Any]) -> None:
        """A result from the trial: an epoch's metrics, or its divergence."""
        rec = self.trials.get(key)
        if rec is None or rec.final:
            return
        if result.get(DIVERGED):
            self.end(key, "diverged", str(result.get("message", "diverged")))
            return
        epoch = int(result[EPOCH])
        metrics = finite_metrics(result)
        repeated = epoch in rec.history  # a retry resumed from an earlier checkpoint
        rec.last_epoch, rec.history[epoch] = epoch, metrics
        rec.value = metrics.get(self.spec.metric.name, rec.value)

        def write() -> None:
            self.sink.epoch_reported(key, epoch, metrics)  # idempotent by contract
            if not repeated:  # MLflow would keep both points of the step
                self.tracker.log_epoch(rec.run_id, epoch, metrics)

        self.outbox.submit(write, f"epoch {epoch} of {key}")

    def finished(self, key: str) -> None:
        """Tune ended the trial without error: all epochs run, or stopped early."""
        rec = self.trials.get(key)
        if rec is not None and not rec.final:
            done = rec.last_epoch >= self.spec.epochs
            self.end(key, "completed" if done else ("cancelled" if self.cancelled else "stopped"))

    def end(self, key: str, status: TrialStatus, message: str = "") -> None:
        """Give the trial its final ``status`` (once) and close its child run."""
        rec = self.trials[key]
        if rec.final:
            return
        rec.status, rec.message = status, message or rec.message
        self._update(rec)
        message = rec.message
        self.outbox.submit(
            lambda: self.tracker.end_trial(rec.run_id, status, message),
            f"close the MLflow run of {key}",
        )

    def end_all(self, status: TrialStatus, message: str = "") -> None:
        """End every trial that has no final status yet (cancel, or a driver error)."""
        for key, rec in self.trials.items():
            if not rec.final:
                self.end(key, status, message)

    def best(self) -> TrialRecord | None:
        """The trial with the best last value of the sweep's metric; diverged trials never."""
        ranked = [r for r in self.trials.values() if r.value is not None and r.status != "diverged"]
        if not ranked:
            return None
        sign = 1.0 if self.spec.metric.mode == "max" else -1.0
        return max(ranked, key=lambda r: sign * (r.value or 0.0))

    def run_name(self, rec: TrialRecord) -> str:
        """``<sweep> #<n> lr=0.01 norm=batch``: the settings that set this trial apart."""
        keys = varied_keys(self.spec)
        leaves = [k.rsplit(".", 1)[-1] for k in keys]
        parts = [
            f"{leaf if leaves.count(leaf) == 1 else key}={_short(rec.params.get(key))}"
            for key, leaf in zip(keys, leaves, strict=True)
        ]
        return " ".join([f"{self.spec.name} #{rec.number}", *parts])

    def summary(self) -> str:
        """``6 trials: 4 completed, 2 stopped``."""
        counts: dict[str, int] = {}
        for rec in self.trials.values():
            counts[rec.status] = counts.get(rec.status, 0) + 1
        detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return f"{len(self.trials)} trials: {detail}" if detail else "no trials ran"

    def _update(self, rec: TrialRecord) -> None:
        """Queue the record's state as it is now; the run id is the one when the write runs."""
        status, message, attempt = rec.status, rec.message, rec.attempt

        def write() -> None:
            update = TrialUpdate(
                key=rec.key,
                status=status,
                params=rec.params,
                mlflow_run_id=rec.run_id,
                message=message,
                attempt=attempt,
            )
            self.sink.trial_updated(update)

        self.outbox.submit(write, f"{status} update of {rec.key}")


def trial_number(key: str) -> int:
    """1-based trial number from Tune's trial id (``3fa2b_00002`` -> 3)."""
    suffix = key.rsplit("_", 1)[-1]
    return int(suffix) + 1 if suffix.isdigit() else 0


def finite_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The sweep metrics of a Tune result that are finite numbers."""
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        value = result.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
