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

Trials are keyed by their number. A driver starts from what the sink holds
(:meth:`SweepProgress.load`): a trial the sink holds as ended stays as it ended, whatever a
restored pack reports of it, and its outcome is part of the search's history
(:meth:`SweepProgress.history`).

Final statuses: a trial that reported every epoch is ``completed``; one stopped sooner (ASHA,
median rule) is ``stopped``; one whose metric stopped being finite is ``diverged``; one whose
configuration is invalid, or whose pack errored past ``max_failures``, is ``failed``; one
still pending or running when the sweep was cancelled is ``cancelled``.
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
    TrialOutcome,
    TrialStatus,
    TrialUpdate,
    best_number,
    finite_metrics,
)
from workers.results import EPOCH
from workers.spec import SweepSpec, varied_keys

log = logging.getLogger(__name__)
LINGER_S = 0.25
"""How long the writer waits for more events before it writes what has queued up."""
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 10.0
"""Backoff between tries of a batch the sink could not store: doubling, capped."""


@dataclass
class TrialRecord:
    """What the driver knows of one trial."""

    number: int
    params: dict[str, Any]
    run_name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    status: TrialStatus = "pending"
    attempt: int = 0
    last_epoch: int = 0
    curve: dict[int, float] = field(default_factory=dict)  # the sweep metric where finite
    message: str = ""
    pack: str = ""  # the Tune trial id of the pack it trains in

    @property
    def final(self) -> bool:
        return self.status in FINAL_TRIAL_STATUSES

    @property
    def value(self) -> float | None:
        """The sweep metric at the last reported epoch, if finite there."""
        return self.curve.get(self.last_epoch)

    def outcome(self) -> TrialOutcome:
        """The trial as the search learns from it."""
        return TrialOutcome(self.number, self.params, self.status, self.last_epoch, self.curve)


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
        self.trials: dict[int, TrialRecord] = {}
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
            self._writing = f"epoch {w.epoch} of trial {w.rec.number}"
            self.sink.epoch_reported(w.rec.number, w.epoch, w.metrics)  # idempotent by contract
            return
        if isinstance(w, _Artifact):
            self._writing = f"artifact {w.path} of trial {w.rec.number}"
            self.sink.artifact_reported(w.rec.number, w.path, w.content)
            return
        self._writing = f"{w.status} update of trial {w.rec.number}"
        update = TrialUpdate(
            number=w.rec.number,
            status=w.status,
            params=w.rec.params,
            run_name=w.rec.run_name,
            config=w.rec.config,
            message=w.message,
            attempt=w.attempt,
            pack=w.rec.pack,
        )
        self.sink.trial_updated(update)

    def load(self, outcomes: list[TrialOutcome]) -> None:
        """Start from the trials the sink holds (a resumed or restarted sweep's); nothing is
        written. A trial held as ended keeps its status, last epoch and curve."""
        for o in outcomes:
            self.trials[o.number] = TrialRecord(
                o.number, dict(o.params), self.run_name(o.number, o.params),
                self._config(o.params), status=o.status, last_epoch=o.epoch,
                curve=dict(o.curve),
            )  # fmt: skip

    def curves(self) -> dict[str, list[float]]:
        """Every trial's metric per epoch, in epoch order (what the stopping board knows)."""
        return {str(n): [r.curve[e] for e in sorted(r.curve)] for n, r in self.trials.items()}

    def stopped(self) -> list[int]:
        """The numbers of the trials stopped early."""
        return [n for n, r in self.trials.items() if r.status == "stopped"]

    def ended(self) -> frozenset[int]:
        """The numbers of the trials that have ended."""
        return frozenset(n for n, r in self.trials.items() if r.final)

    def history(self, before: int) -> list[TrialOutcome] | None:
        """The outcomes of trials 1 .. ``before`` - 1, or None while one has not ended."""
        known = [self.trials.get(n) for n in range(1, before)]
        if any(r is None or not r.final for r in known):
            return None
        return [r.outcome() for r in known if r is not None]

    def seen(self, number: int, params: dict[str, Any], pack: str = "") -> TrialRecord:
        """The record of trial ``number``; a new trial is reported as pending. ``pack``
        names the pack trial it trains in."""
        rec = self.trials.get(number)
        if rec is None:
            rec = self.trials[number] = TrialRecord(
                number, dict(params), self.run_name(number, params), self._config(params),
                pack=pack,
            )  # fmt: skip
            self._update(rec)
        elif pack and rec.pack != pack:  # a resumed sweep's trial, in its restored pack
            rec.pack = pack
            if not rec.final:
                self._update(rec)
        return rec

    def started(self, number: int, params: dict[str, Any], attempt: int, pack: str) -> None:
        """The trial's pack (re)started."""
        rec = self.seen(number, params, pack)
        if rec.final:
            return
        rec.status, rec.attempt = "running", attempt
        self._update(rec)

    def restarting(self, number: int, attempt: int, message: str) -> None:
        """The trial's pack failed and Tune retries it from its last checkpoint."""
        rec = self.trials.get(number)
        if rec is None or rec.final:
            return
        rec.attempt, rec.message = attempt, message
        self._update(rec)

    def result(self, number: int, result: dict[str, Any]) -> None:
        """An epoch's metrics of the trial (ignored once it has ended)."""
        rec = self.trials.get(number)
        if rec is None or rec.final:
            return
        epoch = int(result[EPOCH])
        metrics = finite_metrics(result, METRIC_NAMES)
        rec.last_epoch = epoch
        if self.spec.metric.name in metrics:
            rec.curve[epoch] = metrics[self.spec.metric.name]
        self._queue(_Epoch(rec, epoch, metrics))

    def artifact(self, number: int, path: str, content: bytes) -> None:
        """A file for the trial's MLflow run; called before :meth:`result` with the result it
        came with, so it is written no later than that epoch."""
        rec = self.trials.get(number)
        if rec is not None and not rec.final:
            self._queue(_Artifact(rec, path, content))

    def finished(self, number: int) -> None:
        """The trial's pack ended without error and said nothing more of it: all epochs run,
        or stopped early."""
        rec = self.trials.get(number)
        if rec is not None and not rec.final:
            done = rec.last_epoch >= self.spec.epochs
            status: TrialStatus = "completed" if done else "stopped"
            self.end(number, "cancelled" if self.cancelled and not done else status)

    def end(self, number: int, status: TrialStatus, message: str = "") -> None:
        """Give the trial its final ``status`` (once)."""
        rec = self.trials.get(number)
        if rec is None or rec.final:
            return
        rec.status, rec.message = status, message or rec.message
        self._update(rec)

    def end_all(self, status: TrialStatus, message: str = "") -> None:
        """End every trial that has no final status yet (cancel, or a driver error)."""
        for number, rec in self.trials.items():
            if not rec.final:
                self.end(number, status, message)

    def best(self) -> TrialRecord | None:
        """The best trial by :func:`workers.events.best_number`, or None."""
        candidates = ((r.number, r.status, r.value) for r in self.trials.values())
        number = best_number(candidates, self.spec.metric.mode)
        return None if number is None else self.trials[number]

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
