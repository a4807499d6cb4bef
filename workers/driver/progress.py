"""A running sweep's bookkeeping: each trial's state, forwarded to the sink and to MLflow.

:class:`SweepProgress` lives in the driver process and is fed by the Tune callback of
:mod:`workers.driver.sweep`, so every call comes from Tune's controller thread, in order, as
the :class:`~workers.events.SweepSink` contract requires.

Writes leave Tune's controller thread: every event queues what it must write, and the sweep's
outbox (:mod:`workers.driver.outbox`) writes what has queued up, in order, in one go: one
database transaction (:meth:`~workers.events.SweepSink.batch`) and, per trial, one MLflow
request for all its new epochs and its outcome. The writer lingers :data:`LINGER_S` for events
to gather (a trial's epochs come every few milliseconds on small data); a
:meth:`SweepProgress.flush` cuts the wait short.

Final statuses: a trial that reported every epoch is ``completed``; one Tune ended sooner
(ASHA, median rule) is ``stopped``; one that flagged divergence is ``diverged``; one that errored
past ``max_failures`` is ``failed``; one still pending or running when the sweep was cancelled
is ``cancelled``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from toolbox.metrics import METRIC_NAMES
from workers.driver.outbox import Outbox, OutboxError
from workers.events import (
    FINAL_TRIAL_STATUSES,
    SweepSink,
    TrialStatus,
    TrialUpdate,
    finite_metrics,
    trial_number,
)
from workers.spec import SweepSpec, varied_keys
from workers.tracking import SweepTracker
from workers.trial.trainable import DIVERGED, EPOCH

LINGER_S = 0.25
"""How long the writer waits for more events before it writes what has queued up."""


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


@dataclass(frozen=True)
class _Open:
    """Open the trial's MLflow run, unless it has one."""

    rec: TrialRecord


@dataclass(frozen=True)
class _Update:
    """The trial's state as it was when the event came."""

    rec: TrialRecord
    status: TrialStatus
    message: str
    attempt: int


@dataclass(frozen=True)
class _Epoch:
    """An epoch's metrics; ``repeated``: the run logged it before a retry (MLflow skips it)."""

    rec: TrialRecord
    epoch: int
    metrics: dict[str, float]
    repeated: bool


@dataclass(frozen=True)
class _End:
    """Close the trial's MLflow run with its final status."""

    rec: TrialRecord
    status: TrialStatus
    message: str


_Write = _Open | _Update | _Epoch | _End


class SweepProgress:
    """Trial records of one sweep, reported to ``sink`` and ``tracker`` as they change.

    A write that raises fails the sweep: the next event or :meth:`flush` raises
    :class:`~workers.driver.outbox.OutboxError`, and the writes queued after the failed one are
    dropped. MLflow errors never get this far: the tracker retries, then logs and skips them.
    """

    def __init__(self, spec: SweepSpec, sink: SweepSink, tracker: SweepTracker) -> None:
        self.spec = spec
        self.sink = sink
        self.tracker = tracker
        self.trials: dict[str, TrialRecord] = {}
        self.cancelled = False
        self.snapshot_at = float("-inf")
        """``time.monotonic()`` of Tune's last experiment-state snapshot (the driver sets it)."""
        self.outbox = Outbox(f"sweep {tracker.sweep_uid}")
        self._lock = threading.Lock()
        self._queued: list[_Write] = []
        self._scheduled = False  # a write of the queue is in the outbox and has not begun
        self._hurry = threading.Event()  # set: write now, do not linger
        self._writing = "a progress write"  # the write being made (names a failed one)

    def flush(self) -> None:
        """Wait until every write queued so far is made.

        Raises:
            OutboxError: a write failed.
        """
        self._hurry.set()
        try:
            self.outbox.drain()
        finally:
            self._hurry.clear()

    def close(self) -> OutboxError | None:
        """Make the queued writes, then write synchronously; the first failed write, if any,
        as an :class:`~.outbox.OutboxError` that names it (the original is its cause)."""
        self._hurry.set()
        self.outbox.close()
        with self._lock:  # what a failed write left queued is dropped, as its batch was
            self._queued, self._scheduled = [], False
        return self.outbox.failure()

    def open_sweep(
        self, parent_run_id: str | None, experiment_path: str, *, resumed: bool = True
    ) -> None:
        """Queue the opening of the sweep's MLflow parent run, before any trial's run.

        The sink hears of the run's id once it exists (``sweep_started`` again). ``resumed``
        False: no driver ran the sweep before (no parent run to look for).
        """

        def open_parent() -> None:
            parent = self.tracker.start_sweep(self.spec, parent_run_id, resumed=resumed)
            if parent is not None and parent != parent_run_id:
                self.sink.sweep_started(parent, experiment_path)

        self.outbox.submit(open_parent, "opening the sweep's MLflow run")

    def _queue(self, write: _Write) -> None:
        """Queue a write; the outbox makes it with the others queued by then.

        Raises:
            OutboxError: an earlier write failed.
        """
        self.outbox.raise_if_failed()  # an earlier write failed: so does every later event
        with self._lock:
            self._queued.append(write)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.outbox.submit(self._write_queued, lambda: self._writing)
        except BaseException:
            with self._lock:
                self._queued.remove(write)
                self._scheduled = False
            raise

    def _write_queued(self) -> None:
        self._hurry.wait(LINGER_S)
        with self._lock:
            writes, self._queued, self._scheduled = self._queued, [], False
        self._write(writes)

    def _write(self, writes: list[_Write]) -> None:
        """Runs on the outbox's thread: MLflow runs, then the database, then MLflow metrics.

        A trial's run opens before the database hears of it, so every update carries the run
        id once there is one; its configuration, epochs and end follow in one request.
        """
        for w in writes:
            if isinstance(w, _Open) and w.rec.run_id is None:
                self._writing = f"opening the MLflow run of {w.rec.key}"
                config = self.spec.trial_config(w.rec.params).flatten()
                w.rec.run_id = self.tracker.start_trial(
                    w.rec.key, self.run_name(w.rec), config, defer_params=True
                )
        stored = [w for w in writes if isinstance(w, _Update | _Epoch)]
        if stored:
            with self.sink.batch():
                for w in stored:
                    self._store(w)
                self._writing = f"the transaction of {len(stored)} progress writes"  # commit
        tracked: dict[str, tuple[TrialRecord, list[tuple[int, dict[str, float]]], list[_End]]] = {}
        for w in writes:
            if isinstance(w, _Epoch | _End):
                rec, epochs, ends = tracked.setdefault(w.rec.key, (w.rec, [], []))
                if isinstance(w, _End):
                    ends.append(w)
                elif not w.repeated:  # MLflow would keep both points of the step
                    epochs.append((w.epoch, w.metrics))
        for rec, epochs, ends in tracked.values():
            self._writing = f"the MLflow metrics of {rec.key}"
            self.tracker.log_trial(
                rec.run_id, epochs, (ends[0].status, ends[0].message) if ends else None
            )
        self._writing = "the configuration of new MLflow runs"
        self.tracker.send_due_params()  # runs opened with nothing else to log yet

    def _store(self, w: _Update | _Epoch) -> None:
        """One report to the sink (in the batch's transaction)."""
        if isinstance(w, _Epoch):
            self._writing = f"epoch {w.epoch} of {w.rec.key}"
            self.sink.epoch_reported(w.rec.key, w.epoch, w.metrics)  # idempotent by contract
            return
        self._writing = f"{w.status} update of {w.rec.key}"
        update = TrialUpdate(
            key=w.rec.key,
            status=w.status,
            params=w.rec.params,
            mlflow_run_id=w.rec.run_id,
            message=w.message,
            attempt=w.attempt,
        )
        self.sink.trial_updated(update)

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
                rec.value = finite_metrics(last_result, METRIC_NAMES).get(self.spec.metric.name)
            self._update(rec)
        return self.trials[key]

    def started(self, key: str, params: dict[str, Any], attempt: int) -> None:
        """The trial (re)started; its child run opens on the first start."""
        rec = self.seen(key, params)
        if rec.final:
            return
        self._queue(_Open(rec))  # on every start: a run MLflow could not open is tried again
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
        metrics = finite_metrics(result, METRIC_NAMES)
        repeated = epoch in rec.history  # a retry resumed from an earlier checkpoint
        rec.last_epoch, rec.history[epoch] = epoch, metrics
        rec.value = metrics.get(self.spec.metric.name, rec.value)
        self._queue(_Epoch(rec, epoch, metrics, repeated))

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
        self._queue(_End(rec, status, rec.message))

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
        keys = varied_keys(self.spec.parameters)
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
        self._queue(_Update(rec, rec.status, rec.message, rec.attempt))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
