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
from workers.driver.live import LIVE, LiveSweep
from workers.driver.outbox import OutboxError
from workers.driver.progress import LINGER_S, SweepProgress
from workers.errors import SinkUnavailableError
from workers.events import TrialOutcome
from workers.results import EPOCH

SPEC = digits_spec({"optim.lr": [0.01, 0.1]}, method="grid", epochs=3)
A, B = 1, 2
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

    def sweep_started(self, experiment_path: str) -> None:
        self.journal.note("sweep_started", experiment_path)

    def trials(self, metric: str) -> list[TrialOutcome]:
        return []

    def trial_updated(self, update: Any) -> None:
        self.journal.note("trial_updated", update)

    def epoch_reported(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        self.journal.note("epoch_reported", number, epoch, dict(metrics))

    def artifact_reported(self, number: int, path: str, content: bytes) -> None:
        self.journal.note("artifact_reported", number, path, len(content))

    def sweep_ended(self, status: str, message: str, best: int | None) -> None:
        self.journal.note("sweep_ended", status, best)

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
    progress.seen(A, lr_a, "p1")
    progress.seen(B, lr_b, "p2")
    progress.started(A, lr_a, attempt=1, pack="p1")
    progress.started(B, lr_b, attempt=1, pack="p2")
    progress.result(A, epoch(1, 0.5))
    progress.result(B, epoch(1, 0.4))
    progress.result(A, epoch(2, 0.6))
    progress.restarting(B, 2, "worker died; retrying from the last checkpoint")
    progress.started(B, lr_b, attempt=2, pack="p2")
    progress.result(B, epoch(1, 0.4))  # again, from the checkpoint before epoch 1
    progress.end(B, "diverged", "val_loss is not finite at epoch 2")
    progress.result(A, epoch(3, 0.7))
    progress.finished(A)


DB_WRITES = [  # what the database hears from tune_events, in order
    ("pending", A), ("pending", B), ("running", A), ("running", B), (1, A), (1, B), (2, A),
    ("running", B), ("running", B), (1, B), ("diverged", B), (3, A), ("completed", A),
]  # fmt: skip


def database_writes(journal: Journal) -> list[tuple[Any, str]]:
    """The database's writes: (status, number) of an update, (epoch, number) of an epoch."""
    return [
        (c[1].status, c[1].number) if c[0] == "trial_updated" else (c[2], c[1])
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
    progress.seen(A, {"optim.lr": 0.01}, "p1")
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
    assert {u.run_name for u in updates if u.number == A} == {"digits-sweep #1 lr=0.01"}
    assert {u.run_name for u in updates if u.number == B} == {"digits-sweep #2 lr=0.1"}
    config = next(u.config for u in updates if u.number == A)
    assert config == SPEC.trial_config({"optim.lr": 0.01}).flatten()
    assert config["model.width"] == 32 and config["epochs"] == 3
    progress.close()


def test_a_loaded_trial_keeps_its_end_and_the_best_is_never_failed_or_diverged() -> None:
    journal = Journal(delay=0)
    progress = progress_of(journal)
    progress.load(
        [
            TrialOutcome(1, {"optim.lr": 0.01}, "failed", 2, {1: 0.5, 2: 0.99}),  # top, then failed
            TrialOutcome(2, {"optim.lr": 0.1}, "stopped", 1, {1: 0.6}),
            TrialOutcome(3, {"optim.lr": 0.05}, "running", 1, {1: 0.7}),
        ]
    )
    progress.started(2, {"optim.lr": 0.1}, attempt=2, pack="p")  # a restored pack's trial
    progress.result(2, epoch(2, 0.95))
    progress.result(3, epoch(2, 0.8))
    progress.started(4, {"optim.lr": 0.2}, attempt=1, pack="p")
    progress.result(4, epoch(1, 0.8))
    progress.end(4, "diverged", "val_loss is not finite at epoch 2")
    progress.flush()

    assert database_writes(journal) == [
        (2, 3),
        ("pending", 4),
        ("running", 4),
        (1, 4),
        ("diverged", 4),
    ]
    assert progress.trials[2].status == "stopped" and progress.trials[2].last_epoch == 1
    assert progress.history(before=4) is None  # trial 3 runs on
    best = progress.best()
    assert best is not None and best.number == 3  # not 1 (failed) nor 4 (diverged, tied)
    progress.end(3, "completed")
    history = progress.history(before=4)
    assert history is not None and [o.number for o in history] == [1, 2, 3]
    assert [o.status for o in history] == ["failed", "stopped", "completed"]
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
    progress.seen(A, {"optim.lr": 0.01}, "p1")
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
    progress.seen(A, lr, "p1")
    progress.started(A, lr, attempt=1, pack="p1")
    progress.result(A, epoch(1, 0.5))
    progress.result(A, epoch(2, 0.6))  # in the failing write's batch: never made

    with pytest.raises(
        OutboxError, match=f"epoch 1 of trial {A} failed: RuntimeError: database is"
    ):
        progress.flush()  # Tune's snapshot hooks: the sweep fails
    with pytest.raises(OutboxError):
        progress.result(A, epoch(3, 0.7))  # so does any later event
    with pytest.raises(OutboxError):
        progress.result(A, epoch(4, 0.8))
    failure = progress.close()

    assert isinstance(failure, OutboxError) and isinstance(failure.__cause__, RuntimeError)
    assert f"epoch 1 of trial {A} failed" in str(failure)
    assert database_writes(journal) == [("pending", A), ("running", A)]
    assert driver._sink_unavailable(failure) is None  # a broken write, not an outage
    progress.end_all("failed", "the sweep failed")  # the driver's end: plain calls now
    update = journal.calls[-1][1]
    assert (update.number, update.status, update.message) == (A, "failed", "the sweep failed")


def test_tune_snapshots_only_after_every_queued_write(monkeypatch) -> None:
    journal = Journal()
    progress = progress_of(journal)
    monkeypatch.setitem(LIVE, "abc12", LiveSweep(progress, planner=None))  # type: ignore[arg-type]
    callback, stopper = driver.ProgressCallback("abc12"), driver.CancelStopper("abc12")

    tune_events(progress)
    assert stopper.stop_all() is False  # Tune's last hook before it writes the snapshot
    assert database_writes(journal) == DB_WRITES
    progress.finished(B)  # a final status is final: nothing to write
    progress.result(A, epoch(3, 0.7))
    progress.end(A, "failed")
    progress.seen(3, {"optim.lr": 0.05}, "p3")
    assert callback.get_state() is None  # no callback state file; the writes are done
    assert database_writes(journal) == [*DB_WRITES, ("pending", 3)]
    progress.close()
