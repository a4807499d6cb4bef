"""A sweep's progress writes leave Tune's callbacks at once and still land in order.

The sink and the tracker here are slow recorders sharing one journal: the real ones are
exercised end to end in ``test_driver.py``; these tests need writes slow enough to be caught
in flight, and a failing write on demand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.workers.sweeps import digits_spec
from workers import driver
from workers.outbox import OutboxError
from workers.progress import SweepProgress
from workers.trainable import DIVERGED, EPOCH

SPEC = digits_spec({"optim.lr": [0.01, 0.1]}, method="grid", epochs=3)
A, B = "abc12_00000", "abc12_00001"
WRITE_S = 0.03


class Journal:
    """Every write of the sink and the tracker, in the order made, each taking ``delay``."""

    def __init__(self, delay: float = WRITE_S, fail: Callable[[tuple], bool] | None = None):
        self.delay = delay
        self.fail = fail
        self.calls: list[tuple] = []
        self.threads: set[str] = set()

    def note(self, *call: Any) -> None:
        time.sleep(self.delay)
        if self.fail is not None and self.fail(call):
            raise RuntimeError(f"database is locked ({call[0]})")
        self.calls.append(call)
        self.threads.add(threading.current_thread().name)


class SlowSink:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def sweep_started(self, mlflow_run_id: str | None, experiment_path: str) -> None:
        self.journal.note("sweep_started", mlflow_run_id)

    def trial_updated(self, update: Any) -> None:
        self.journal.note("trial_updated", update)

    def epoch_reported(self, trial_key: str, epoch: int, metrics: dict[str, float]) -> None:
        self.journal.note("epoch_reported", trial_key, epoch, dict(metrics))

    def sweep_ended(self, status: str, message: str, best_trial_key: str | None) -> None:
        self.journal.note("sweep_ended", status, best_trial_key)

    def cancel_requested(self) -> bool:
        return False


class SlowTracker:
    sweep_id = "abc12"

    def __init__(self, journal: Journal, offline_starts: int = 0) -> None:
        self.journal = journal
        self.offline_starts = offline_starts  # the first starts find MLflow down

    def start_trial(self, trial_key: str, run_name: str, config: dict[str, Any]) -> str | None:
        self.journal.note("start_trial", trial_key, run_name)
        if self.offline_starts:
            self.offline_starts -= 1
            return None
        return f"run-{trial_key}"

    def log_epoch(self, run_id: str | None, epoch: int, metrics: dict[str, float]) -> None:
        self.journal.note("log_epoch", run_id, epoch)

    def end_trial(self, run_id: str | None, status: str, message: str = "") -> None:
        self.journal.note("end_trial", run_id, status, message)


def progress_of(journal: Journal, **tracker_kw: Any) -> SweepProgress:
    return SweepProgress(SPEC, SlowSink(journal), SlowTracker(journal, **tracker_kw))  # type: ignore[arg-type]


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


def synchronous_journal(**tracker_kw: Any) -> tuple[Journal, SweepProgress]:
    """The same events written as plain calls (a closed outbox), as before the outbox."""
    journal = Journal(delay=0)
    progress = progress_of(journal, **tracker_kw)
    progress.close()
    tune_events(progress)
    return journal, progress


def test_tune_callbacks_return_at_once_and_the_writes_land_in_order() -> None:
    journal = Journal()
    progress = progress_of(journal)

    start = time.monotonic()
    tune_events(progress)
    in_callbacks = time.monotonic() - start
    progress.flush()
    in_writes = time.monotonic() - start
    expected, reference = synchronous_journal()

    assert len(journal.calls) == len(expected.calls) == 21
    assert in_writes >= 21 * WRITE_S
    assert in_callbacks < 0.25 * 21 * WRITE_S, (in_callbacks, in_writes)
    assert journal.calls == expected.calls
    assert journal.threads == {"outbox sweep abc12"}
    progress.close()
    assert progress.trials == reference.trials  # run ids included
    assert progress.trials[A].run_id == f"run-{A}"


def test_the_run_id_reaches_every_write_after_the_run_opened() -> None:
    journal = Journal()
    progress = progress_of(journal)
    tune_events(progress)
    progress.flush()

    running = [c[1] for c in journal.calls if c[0] == "trial_updated" and c[1].key == A]
    assert [(u.status, u.mlflow_run_id) for u in running] == [
        ("pending", None),
        ("running", f"run-{A}"),
        ("completed", f"run-{A}"),
    ]
    assert ("log_epoch", f"run-{A}", 3) in journal.calls
    assert ("end_trial", f"run-{B}", "diverged", "diverged at epoch 2") in journal.calls
    progress.close()


def test_a_run_mlflow_could_not_open_is_opened_at_the_trials_next_start() -> None:
    journal = Journal()
    progress = progress_of(journal, offline_starts=1)  # A's first start finds MLflow down
    tune_events(progress)
    progress.close()
    expected, _ = synchronous_journal(offline_starts=1)

    assert journal.calls == expected.calls
    starts = [c[1] for c in journal.calls if c[0] == "start_trial"]
    assert starts == [A, B]  # B opened on its first start, kept on its retry
    assert progress.trials[A].run_id is None and progress.trials[B].run_id == f"run-{B}"


def test_a_failed_write_fails_the_next_event_and_later_writes_are_dropped() -> None:
    journal = Journal(fail=lambda call: call[:3] == ("epoch_reported", A, 1))
    progress = progress_of(journal)
    lr = {"optim.lr": 0.01}
    progress.seen(A, lr)
    progress.started(A, lr, attempt=1)
    progress.result(A, epoch(1, 0.5))
    progress.result(A, epoch(2, 0.6))  # queued behind the failing write: dropped

    with pytest.raises(OutboxError, match=f"epoch 1 of {A} failed: RuntimeError: database is"):
        progress.flush()  # Tune's snapshot hooks: the sweep fails, as it did
    with pytest.raises(OutboxError):
        progress.result(A, epoch(3, 0.7))  # so does any later event
    failure = progress.close()

    assert isinstance(failure, RuntimeError)
    assert [c[0] for c in journal.calls] == ["trial_updated", "start_trial", "trial_updated"]
    progress.end_all("failed", "the sweep failed")  # the driver's end: plain calls now
    update, end = journal.calls[-2:]
    assert (update[1].status, update[1].mlflow_run_id) == ("failed", f"run-{A}")
    assert end == ("end_trial", f"run-{A}", "failed", "the sweep failed")


def test_tune_snapshots_only_after_every_queued_write(monkeypatch) -> None:
    journal = Journal()
    progress = progress_of(journal)
    monkeypatch.setitem(driver._LIVE, "abc12", progress)
    callback, stopper = driver.ProgressCallback("abc12"), driver.CancelStopper("abc12")

    tune_events(progress)
    assert stopper.stop_all() is False  # Tune's last hook before it writes the snapshot
    assert len(journal.calls) == 21
    progress.finished(B)  # a final status is final: nothing to write
    progress.result(A, epoch(3, 0.7))
    progress.end(A, "failed")
    progress.seen("abc12_00002", {"optim.lr": 0.05})
    assert callback.get_state() is None  # no callback state file; the writes are done
    assert len(journal.calls) == 22 and journal.calls[-1][1].key == "abc12_00002"
    progress.close()
