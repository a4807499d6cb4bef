"""A sweep's progress writes leave Tune's callbacks at once, gather, and still land in order.

The sink here is a slow recorder: the real one is exercised end to end in ``test_sweep.py``
and the service's tests; these tests need writes slow enough to be caught in flight, and a
failing or unavailable sink on demand.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.workers.sweeps import digits_spec
from workers.driver import sweep as driver
from workers.driver.outbox import OutboxError
from workers.driver.progress import LINGER_S, SweepProgress
from workers.errors import SinkUnavailableError
from workers.trial.trainable import DIVERGED, EPOCH, INVALID

SPEC = digits_spec({"optim.lr": [0.01, 0.1]}, method="grid", epochs=3)
A, B = "abc12_00000", "abc12_00001"
WRITE_S = 0.03


class Journal:
    """Every write of the sink, in the order made, each taking ``delay``; ``fail`` raises for
    the calls it picks (a broken write), ``down`` makes the next that many calls find the
    sink unavailable (a database outage)."""

    def __init__(
        self, delay: float = WRITE_S, fail: Callable[[tuple], bool] | None = None, down: int = 0
    ):
        self.delay = delay
        self.fail = fail
        self.down = down
        self.calls: list[tuple] = []
        self.threads: set[str] = set()

    def note(self, *call: Any) -> None:
        time.sleep(self.delay)
        if self.down:
            self.down -= 1
            raise SinkUnavailableError("the database is unreachable")
        if self.fail is not None and self.fail(call):
            raise RuntimeError(f"database is locked ({call[0]})")
        self.calls.append(call)
        self.threads.add(threading.current_thread().name)


class SlowSink:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def sweep_started(self, experiment_path: str, over: bool = False) -> None:
        self.journal.note("sweep_started", experiment_path)

    def trial_updated(self, update: Any) -> None:
        self.journal.note("trial_updated", update)

    def epoch_reported(self, trial_key: str, epoch: int, metrics: dict[str, float]) -> None:
        self.journal.note("epoch_reported", trial_key, epoch, dict(metrics))

    def artifact_reported(self, trial_key: str, path: str, content: bytes) -> None:
        self.journal.note("artifact_reported", trial_key, path, len(content))

    def sweep_ended(self, status: str, message: str, best_trial_key: str | None) -> None:
        self.journal.note("sweep_ended", status, best_trial_key)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        mark = len(self.journal.calls)
        self.journal.calls.append(("batch",))
        try:
            yield
        except SinkUnavailableError:
            del self.journal.calls[mark:]  # the transaction rolled back
            raise

    def cancel_requested(self) -> bool:
        return False


def progress_of(journal: Journal, patience_s: float = 60.0) -> SweepProgress:
    return SweepProgress(SPEC, SlowSink(journal), "abc12", patience_s=patience_s)


def epoch(n: int, accuracy: float) -> dict[str, Any]:
    return {EPOCH: n, "val_accuracy": accuracy, "val_loss": 1.0 - accuracy, "lr": 0.1}


def tune_events(progress: SweepProgress) -> None:
    """What Tune's callbacks tell the progress of a small sweep: two trials, a retry, a NaN."""
    lr_a, lr_b = {"optim.lr": 0.01}, {"optim.lr": 0.1}
    progress.seen(A, lr_a)
    progress.seen(B, lr_b)
    progress.started(A, lr_a, attempt=1)
    progress.started(B, lr_b, attempt=1)
    progress.result(A, epoch(1, 0.5))
    progress.result(B, epoch(1, 0.4))
    progress.result(A, epoch(2, 0.6))
    progress.restarting(B, 2, "worker died; retrying from the last checkpoint")
    progress.started(B, lr_b, attempt=2)
    progress.result(B, epoch(1, 0.4))  # again, from the checkpoint before epoch 1
    progress.result(B, {EPOCH: 2, DIVERGED: True, "message": "diverged at epoch 2"})
    progress.result(A, epoch(3, 0.7))
    progress.finished(A)


DB_WRITES = [  # what the database hears from tune_events, in order
    ("pending", A), ("pending", B), ("running", A), ("running", B), (1, A), (1, B), (2, A),
    ("running", B), ("running", B), (1, B), ("diverged", B), (3, A), ("completed", A),
]  # fmt: skip


def database_writes(journal: Journal) -> list[tuple[Any, str]]:
    """The database's writes: (status, key) of an update, (epoch, key) of an epoch."""
    return [
        (c[1].status, c[1].key) if c[0] == "trial_updated" else (c[2], c[1])
        for c in journal.calls
        if c[0] in ("trial_updated", "epoch_reported")
    ]


def test_tune_callbacks_return_at_once_and_every_write_lands_in_order() -> None:
    journal = Journal()
    progress = progress_of(journal)

    start = time.monotonic()
    tune_events(progress)
    in_callbacks = time.monotonic() - start
    progress.flush()

    assert in_callbacks < 0.25 * len(DB_WRITES) * WRITE_S, in_callbacks
    assert database_writes(journal) == DB_WRITES
    assert journal.threads == {"outbox sweep abc12"}
    progress.close()
    assert (progress.trials[A].status, progress.trials[B].status) == ("completed", "diverged")


def test_writes_that_queue_up_go_out_together() -> None:
    journal = Journal()
    progress = progress_of(journal)
    tune_events(progress)  # in far less than the writer's linger
    progress.flush()

    assert journal.calls.count(("batch",)) == 1  # one database transaction
    progress.close()


def test_a_flush_does_not_wait_for_more_writes_to_gather() -> None:
    journal = Journal(delay=0)
    progress = progress_of(journal)
    progress.seen(A, {"optim.lr": 0.01})
    start = time.monotonic()
    progress.flush()
    assert time.monotonic() - start < LINGER_S  # the writer's linger was cut short
    assert database_writes(journal) == [("pending", A)]
    progress.close()


def test_every_update_names_the_trials_run_and_carries_its_whole_configuration() -> None:
    journal = Journal(delay=0)
    progress = progress_of(journal)
    tune_events(progress)
    progress.flush()

    updates = [c[1] for c in journal.calls if c[0] == "trial_updated"]
    assert {u.run_name for u in updates if u.key == A} == {"digits-sweep #1 lr=0.01"}
    assert {u.run_name for u in updates if u.key == B} == {"digits-sweep #2 lr=0.1"}
    config = next(u.config for u in updates if u.key == A)
    assert config == SPEC.trial_config({"optim.lr": 0.01}).flatten()
    assert config["model.width"] == 32 and config["epochs"] == 3
    progress.close()


def test_an_invalid_configuration_fails_its_trial_with_the_reason() -> None:
    journal = Journal(delay=0)
    progress = progress_of(journal)
    bad = {"optim.nesterov": True, "optim.momentum": 0.0}
    progress.started(A, bad, attempt=1)
    message = "invalid configuration: optim: Value error, optim.nesterov=true needs momentum"
    progress.result(A, {EPOCH: 0, INVALID: True, "message": message})
    progress.flush()

    last = [c[1] for c in journal.calls if c[0] == "trial_updated"][-1]
    assert (last.status, last.message, last.config) == ("failed", message, bad)
    progress.close()


def test_writes_the_sink_cannot_store_for_now_are_retried_until_it_can() -> None:
    journal = Journal(delay=0, down=3)  # three tries find the database down
    progress = progress_of(journal)
    tune_events(progress)
    progress.flush()

    assert database_writes(journal) == DB_WRITES  # everything, once, in order
    assert journal.calls.count(("batch",)) == 1
    assert progress.close() is None


def test_a_sink_unavailable_past_the_patience_gives_up_without_ending_the_sweep() -> None:
    journal = Journal(delay=0, down=1000)
    progress = progress_of(journal, patience_s=0.5)
    progress.seen(A, {"optim.lr": 0.01})
    with pytest.raises(OutboxError):
        progress.flush()
    failure = progress.close()

    unavailable = driver._sink_unavailable(failure)
    assert isinstance(unavailable, SinkUnavailableError)  # run_sweep raises it: no sweep end
    assert journal.calls == []


def test_a_failed_write_fails_the_next_event_and_later_writes_are_dropped() -> None:
    journal = Journal(fail=lambda call: call[:3] == ("epoch_reported", A, 1))
    progress = progress_of(journal)
    lr = {"optim.lr": 0.01}
    progress.seen(A, lr)
    progress.started(A, lr, attempt=1)
    progress.result(A, epoch(1, 0.5))
    progress.result(A, epoch(2, 0.6))  # in the failing write's batch: never made

    with pytest.raises(OutboxError, match=f"epoch 1 of {A} failed: RuntimeError: database is"):
        progress.flush()  # Tune's snapshot hooks: the sweep fails
    with pytest.raises(OutboxError):
        progress.result(A, epoch(3, 0.7))  # so does any later event
    with pytest.raises(OutboxError):
        progress.result(A, epoch(4, 0.8))
    failure = progress.close()

    assert isinstance(failure, OutboxError) and isinstance(failure.__cause__, RuntimeError)
    assert f"epoch 1 of {A} failed" in str(failure)
    assert database_writes(journal) == [("pending", A), ("running", A)]
    assert driver._sink_unavailable(failure) is None  # a broken write, not an outage
    progress.end_all("failed", "the sweep failed")  # the driver's end: plain calls now
    update = journal.calls[-1][1]
    assert (update.key, update.status, update.message) == (A, "failed", "the sweep failed")


def test_tune_snapshots_only_after_every_queued_write(monkeypatch) -> None:
    journal = Journal()
    progress = progress_of(journal)
    monkeypatch.setitem(driver._LIVE, "abc12", progress)
    callback, stopper = driver.ProgressCallback("abc12"), driver.CancelStopper("abc12")

    tune_events(progress)
    assert stopper.stop_all() is False  # Tune's last hook before it writes the snapshot
    assert database_writes(journal) == DB_WRITES
    progress.finished(B)  # a final status is final: nothing to write
    progress.result(A, epoch(3, 0.7))
    progress.end(A, "failed")
    progress.seen("abc12_00002", {"optim.lr": 0.05})
    assert callback.get_state() is None  # no callback state file; the writes are done
    assert database_writes(journal) == [*DB_WRITES, ("pending", "abc12_00002")]
    progress.close()
