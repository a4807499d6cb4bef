"""A sweep's progress writes leave Tune's callbacks at once, gather, and still land in order.

The sink and the tracker here are slow recorders sharing one journal: the real ones are
exercised end to end in ``test_sweep.py``; these tests need writes slow enough to be caught
in flight, and a failing write on demand.
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
from workers.trial.trainable import DIVERGED, EPOCH

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

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self.journal.calls.append(("batch",))
        yield

    def cancel_requested(self) -> bool:
        return False


class SlowTracker:
    sweep_uid = "abc12"

    def __init__(self, journal: Journal, offline_starts: int = 0) -> None:
        self.journal = journal
        self.offline_starts = offline_starts  # the first starts find MLflow down

    def start_trial(
        self, trial_key: str, run_name: str, config: dict[str, Any], *, defer_params: bool
    ) -> str | None:
        self.journal.note("start_trial", trial_key, run_name)
        if self.offline_starts:
            self.offline_starts -= 1
            return None
        return f"run-{trial_key}"

    def send_due_params(self) -> None:
        pass

    def log_trial(
        self,
        run_id: str | None,
        epochs: list[tuple[int, dict[str, float]]],
        end: tuple[str, str] | None = None,
    ) -> None:
        self.journal.note("log_trial", run_id, [e for e, _ in epochs], end)


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


def mlflow_writes(journal: Journal, run_id: str) -> tuple[list[int], list[tuple[str, str]]]:
    """The epochs the run was sent, in order, and the ends it was given."""
    logs = [c for c in journal.calls if c[0] == "log_trial" and c[1] == run_id]
    return [e for c in logs for e in c[2]], [c[3] for c in logs if c[3] is not None]


def test_tune_callbacks_return_at_once_and_every_write_lands_in_order() -> None:
    journal = Journal()
    progress = progress_of(journal)

    start = time.monotonic()
    tune_events(progress)
    in_callbacks = time.monotonic() - start
    progress.flush()

    assert in_callbacks < 0.25 * len(DB_WRITES) * WRITE_S, in_callbacks
    assert database_writes(journal) == DB_WRITES
    assert mlflow_writes(journal, f"run-{A}") == ([1, 2, 3], [("completed", "")])
    # B's epoch 1 came twice (a retry from an earlier checkpoint): MLflow gets it once.
    assert mlflow_writes(journal, f"run-{B}") == ([1], [("diverged", "diverged at epoch 2")])
    assert [c[1] for c in journal.calls if c[0] == "start_trial"] == [A, B]
    assert journal.threads == {"outbox sweep abc12"}
    progress.close()
    assert progress.trials[A].run_id == f"run-{A}"
    assert (progress.trials[A].status, progress.trials[B].status) == ("completed", "diverged")


def test_writes_that_queue_up_go_out_together() -> None:
    journal = Journal()
    progress = progress_of(journal)
    tune_events(progress)  # in far less than the writer's linger
    progress.flush()

    assert journal.calls.count(("batch",)) == 1  # one database transaction
    logs = [c for c in journal.calls if c[0] == "log_trial"]
    assert len(logs) == 2  # one MLflow request per trial: its epochs and its end
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


def test_the_run_id_reaches_every_write_after_the_run_opened() -> None:
    journal = Journal()
    progress = progress_of(journal)
    progress.seen(A, {"optim.lr": 0.01})
    progress.flush()  # A's pending state is written before its run exists
    tune_events(progress)
    progress.flush()

    updates = [c[1] for c in journal.calls if c[0] == "trial_updated" and c[1].key == A]
    assert [(u.status, u.mlflow_run_id) for u in updates] == [
        ("pending", None),
        ("running", f"run-{A}"),
        ("completed", f"run-{A}"),
    ]
    opened = journal.calls.index(("start_trial", A, "digits-sweep #1 lr=0.01"))
    first_log = next(i for i, c in enumerate(journal.calls) if c[:2] == ("log_trial", f"run-{A}"))
    assert opened < first_log
    progress.close()


def test_a_run_mlflow_could_not_open_is_opened_at_the_trials_next_start() -> None:
    journal = Journal()
    progress = progress_of(journal, offline_starts=1)  # A's first start finds MLflow down
    lr_a, lr_b = {"optim.lr": 0.01}, {"optim.lr": 0.1}
    progress.started(A, lr_a, attempt=1)
    progress.started(B, lr_b, attempt=1)
    progress.result(A, epoch(1, 0.5))
    progress.flush()
    assert progress.trials[A].run_id is None and progress.trials[B].run_id == f"run-{B}"
    assert ("log_trial", None, [1], None) in journal.calls  # the tracker skips it

    progress.restarting(A, 2, "worker died")
    progress.started(A, lr_a, attempt=2)
    progress.started(B, lr_b, attempt=2)  # B has its run: not opened again
    progress.flush()
    assert [c[1] for c in journal.calls if c[0] == "start_trial"] == [A, B, A]
    assert progress.trials[A].run_id == f"run-{A}"
    progress.close()


def test_a_failed_write_fails_the_next_event_and_later_writes_are_dropped() -> None:
    journal = Journal(fail=lambda call: call[:3] == ("epoch_reported", A, 1))
    progress = progress_of(journal)
    lr = {"optim.lr": 0.01}
    progress.seen(A, lr)
    progress.started(A, lr, attempt=1)
    progress.result(A, epoch(1, 0.5))
    progress.result(A, epoch(2, 0.6))  # in the failing write's batch: never made

    with pytest.raises(OutboxError, match=f"epoch 1 of {A} failed: RuntimeError: database is"):
        progress.flush()  # Tune's snapshot hooks: the sweep fails, as it did
    with pytest.raises(OutboxError):
        progress.result(A, epoch(3, 0.7))  # so does any later event
    with pytest.raises(OutboxError):
        progress.result(A, epoch(4, 0.8))
    failure = progress.close()

    assert isinstance(failure, OutboxError) and isinstance(failure.__cause__, RuntimeError)
    assert f"epoch 1 of {A} failed" in str(failure)
    assert database_writes(journal) == [("pending", A), ("running", A)]
    assert not [c for c in journal.calls if c[0] == "log_trial"]
    progress.end_all("failed", "the sweep failed")  # the driver's end: plain calls now
    update, end = journal.calls[-2:]
    assert (update[1].status, update[1].mlflow_run_id) == ("failed", f"run-{A}")
    assert end == ("log_trial", f"run-{A}", [], ("failed", "the sweep failed"))


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
