"""A running sweep's bookkeeping: each trial's state, written to the sink behind Tune.

:class:`SweepProgress` lives in the driver process and is fed by the Tune callback of
:mod:`workers.driver.sweep`, so every call comes from Tune's controller thread, in order, as
the :class:`~workers.events.SweepSink` contract requires.

Writes leave Tune's controller thread: every event queues what it must write, and the sweep's
outbox (:mod:`workers.driver.outbox`) writes what has queued up, in order, in one sink batch
(one database transaction). The writer lingers :data:`LINGER_S` for events to gather (a trial's
epochs come every few milliseconds on small data); a :meth:`SweepProgress.flush` cuts the wait
short. A batch the sink cannot store for now (:class:`~workers.errors.SinkUnavailableError`) is
retried with backoff for ``patience_s`` seconds. The driver never talks to MLflow: the service
delivers what the sink stored (run names, configurations, epochs, outcomes) to MLflow itself.

Final statuses: a trial that reported every epoch is ``completed``; one Tune ended sooner
(ASHA, median rule) is ``stopped``; one that flagged divergence is ``diverged``; one whose
configuration is invalid, or that errored past ``max_failures``, is ``failed``; one still
pending or running when the sweep was cancelled is ``cancelled``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from toolbox.metrics import METRIC_NAMES
from workers.driver.outbox import Outbox, OutboxError
from workers.errors import SinkUnavailableError
from workers.events import (
    FINAL_TRIAL_STATUSES,
    SweepSink,
    TrialStatus,
    TrialUpdate,
    finite_metrics,
    trial_number,
)
from workers.spec import SweepSpec, varied_keys
from workers.trial.trainable import DIVERGED, EPOCH, INVALID

log = logging.getLogger(__name__)
LINGER_S = 0.25
"""How long the writer waits for more events before it writes what has queued up."""
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 10.0
"""Backoff between tries of a batch the sink could not store: doubling, capped."""


@dataclass
class TrialRecord:
    """What the driver knows of one trial."""

    key: str
    number: int
    params: dict[str, Any]
    run_name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    status: TrialStatus = "pending"
    attempt: int = 0
    last_epoch: int = 0
    value: float | None = None  # the sweep metric at the last reported epoch
    message: str = ""
    pack: str = ""  # the Tune trial id of the pack it trains in, if packed

    @property
    def final(self) -> bool:
        return self.status in FINAL_TRIAL_STATUSES


@dataclass(frozen=True)
class _Update:
    """The trial's state as it was when the event came."""

    rec: TrialRecord
    status: TrialStatus
    message: str
    attempt: int


@dataclass(frozen=True)
class _Epoch:
    """An epoch's metrics (a retry resumed from an earlier checkpoint may repeat one)."""

    rec: TrialRecord
    epoch: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class _Artifact:
    """A file of the trial's MLflow run (it came with a result)."""

    rec: TrialRecord
    path: str
    content: bytes


_Write = _Update | _Epoch | _Artifact


class SweepProgress:
    """Trial records of one sweep, reported to ``sink`` as they change.

    A write that raises (other than for a while :class:`~workers.errors.SinkUnavailableError`)
    fails the sweep: the next event or :meth:`flush` raises
    :class:`~workers.driver.outbox.OutboxError`, and the writes queued after the failed one are
    dropped.
    """

    def __init__(
        self, spec: SweepSpec, sink: SweepSink, name: str, *, patience_s: float = 300.0
    ) -> None:
        """``name`` (the sweep's uid) names the outbox in logs; ``patience_s`` is how long a
        batch the sink cannot store is retried before the driver gives up."""
        self.spec = spec
        self.sink = sink
        self.patience_s = patience_s
        self.trials: dict[str, TrialRecord] = {}
        self.cancelled = False
        self.snapshot_at = float("-inf")
        """``time.monotonic()`` of Tune's last experiment-state snapshot (the driver sets it)."""
        self.outbox = Outbox(f"sweep {name}")
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
        """Runs on the outbox's thread: one sink batch, retried while the sink is unavailable."""

        def batch() -> None:
            with self.sink.batch():
                for w in writes:
                    self._store(w)
                self._writing = f"the transaction of {len(writes)} progress writes"

        self.retrying(batch)

    def retrying(self, call: Callable[[], object]) -> None:
        """Make ``call``, again with backoff while it raises
        :class:`~workers.errors.SinkUnavailableError`, for at most ``patience_s`` seconds.

        Raises:
            SinkUnavailableError: the sink stayed unavailable that long.
        """
        deadline = time.monotonic() + self.patience_s
        delay = RETRY_FIRST_S
        while True:
            try:
                call()
                return
            except SinkUnavailableError as err:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: the sink is unavailable (%s); retrying", self.outbox.name, err)
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)

    def _store(self, w: _Write) -> None:
        """One report to the sink (in the batch's transaction)."""
        if isinstance(w, _Epoch):
            self._writing = f"epoch {w.epoch} of {w.rec.key}"
            self.sink.epoch_reported(w.rec.key, w.epoch, w.metrics)  # idempotent by contract
            return
        if isinstance(w, _Artifact):
            self._writing = f"artifact {w.path} of {w.rec.key}"
            self.sink.artifact_reported(w.rec.key, w.path, w.content)
            return
        self._writing = f"{w.status} update of {w.rec.key}"
        update = TrialUpdate(
            key=w.rec.key,
            status=w.status,
            params=w.rec.params,
            run_name=w.rec.run_name,
            config=w.rec.config,
            message=w.message,
            attempt=w.attempt,
            pack=w.rec.pack,
        )
        self.sink.trial_updated(update)

    def seen(
        self,
        key: str,
        params: dict[str, Any],
        last_result: dict[str, Any] | None = None,
        pack: str = "",
    ) -> TrialRecord:
        """The record of trial ``key``; a new trial is reported as pending.

        ``last_result`` is what a trial restored from an earlier driver had reported: its last
        epoch counts, so a trial that had finished is judged completed, not stopped. ``pack``
        names the pack trial a member trains in.
        """
        if key not in self.trials:
            number = trial_number(key)
            rec = self.trials[key] = TrialRecord(
                key, number, dict(params), self.run_name(number, params), self._config(params),
                pack=pack,
            )  # fmt: skip
            if last_result and EPOCH in last_result and not last_result.get(DIVERGED):
                rec.last_epoch = int(last_result[EPOCH])
                rec.value = finite_metrics(last_result, METRIC_NAMES).get(self.spec.metric.name)
            self._update(rec)
        return self.trials[key]

    def started(self, key: str, params: dict[str, Any], attempt: int) -> None:
        """The trial (re)started."""
        rec = self.seen(key, params)
        if rec.final:
            return
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
        """A result from the trial: an epoch's metrics, its divergence, or an invalid
        configuration."""
        rec = self.trials.get(key)
        if rec is None or rec.final:
            return
        if result.get(INVALID):
            self.end(key, "failed", str(result.get("message", "invalid configuration")))
            return
        if result.get(DIVERGED):
            self.end(key, "diverged", str(result.get("message", "diverged")))
            return
        epoch = int(result[EPOCH])
        metrics = finite_metrics(result, METRIC_NAMES)
        rec.last_epoch = epoch
        rec.value = metrics.get(self.spec.metric.name, rec.value)
        self._queue(_Epoch(rec, epoch, metrics))

    def artifact(self, key: str, path: str, content: bytes) -> None:
        """A file for the trial's MLflow run; called before :meth:`result` with the result it
        came with, so it is written no later than that epoch."""
        rec = self.trials.get(key)
        if rec is not None and not rec.final:
            self._queue(_Artifact(rec, path, content))

    def finished(self, key: str) -> None:
        """Tune ended the trial without error: all epochs run, or stopped early."""
        rec = self.trials.get(key)
        if rec is not None and not rec.final:
            done = rec.last_epoch >= self.spec.epochs
            self.end(key, "completed" if done else ("cancelled" if self.cancelled else "stopped"))

    def end(self, key: str, status: TrialStatus, message: str = "") -> None:
        """Give the trial its final ``status`` (once)."""
        rec = self.trials[key]
        if rec.final:
            return
        rec.status, rec.message = status, message or rec.message
        self._update(rec)

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

    def run_name(self, number: int, params: dict[str, Any]) -> str:
        """``<sweep> #<n> lr=0.01 norm=batch``: the settings that set this trial apart."""
        keys = varied_keys(self.spec.parameters)
        leaves = [k.rsplit(".", 1)[-1] for k in keys]
        parts = [
            f"{leaf if leaves.count(leaf) == 1 else key}={_short(params.get(key))}"
            for key, leaf in zip(keys, leaves, strict=True)
        ]
        return " ".join([f"{self.spec.name} #{number}", *parts])

    def _config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The trial's whole configuration; its sampled parameters alone when they are an
        invalid combination (the trial then fails with the reason)."""
        try:
            return self.spec.trial_config(params).flatten()
        except ValidationError:
            return dict(params)

    def summary(self) -> str:
        """``6 trials: 4 completed, 2 stopped``."""
        counts: dict[str, int] = {}
        for rec in self.trials.values():
            counts[rec.status] = counts.get(rec.status, 0) + 1
        detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return f"{len(self.trials)} trials: {detail}" if detail else "no trials ran"

    def _update(self, rec: TrialRecord) -> None:
        """Queue the record's state as it is now."""
        self._queue(_Update(rec, rec.status, rec.message, rec.attempt))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
