"""The storage layer and the database sink: one contract, run on a real SQLite file and on a
real PostgreSQL database (no Ray, no MLflow)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.errors import (
    IdempotencyConflictError,
    StorageError,
    SweepFinishedError,
    SweepNotFoundError,
)
from service.job.sink import DatabaseSink
from service.store.db import init_db, make_engine, make_session_factory, session_scope
from service.store.models import Sweep
from workers.events import TrialUpdate
from workers.spec import SweepSpec

SPEC = SweepSpec.model_validate({"name": "store", "parameters": {"optim.lr": [0.01, 0.1]}})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state/sweeps.db"
    else:
        url = request.getfixturevalue("pg_database_url")
    engine = make_engine(url)
    init_db(engine)
    yield make_session_factory(engine)
    engine.dispose()


def new_sweep(factory: sessionmaker[Session], key: str | None = None) -> int:
    with session_scope(factory) as session:
        sweep, _ = store.create_sweep(session, SPEC, key)
        session.flush()
        return sweep.id


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    factory = make_session_factory(make_engine(f"sqlite:///{tmp_path}/wal.db"))
    with session_scope(factory) as session:
        assert session.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_same_idempotency_key_and_body_returns_the_same_sweep(factory) -> None:
    first = new_sweep(factory, "k1")
    with session_scope(factory) as session:
        again, created = store.create_sweep(session, SPEC, "k1")
    assert (again.id, created) == (first, False)


def test_same_idempotency_key_with_another_body_is_a_conflict(factory) -> None:
    new_sweep(factory, "k2")
    other = SPEC.model_copy(update={"epochs": 9})
    with (
        pytest.raises(IdempotencyConflictError, match="different request body"),
        session_scope(factory) as session,
    ):
        store.create_sweep(session, other, "k2")


def test_concurrent_creates_with_one_key_make_one_sweep(factory) -> None:
    ids: list[int] = []

    def create() -> None:
        ids.append(new_sweep(factory, "race"))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 4


def test_session_scope_wraps_database_errors_and_rolls_back(factory) -> None:
    with pytest.raises(StorageError), session_scope(factory) as session:
        session.add(Sweep(name="x", spec={}, body_hash="h"))  # experiment_name is NOT NULL
    with session_scope(factory) as session:
        assert store.list_sweeps(session, status=None, limit=10, offset=0)[1] == 0


def test_a_final_trial_status_is_never_replaced(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.trial_updated(TrialUpdate("t_00000", "running", {"optim.lr": 0.1}))
    sink.trial_updated(TrialUpdate("t_00000", "diverged", message="NaN loss at epoch 2"))
    sink.trial_updated(TrialUpdate("t_00000", "running", attempt=2))  # a replay after resume
    with session_scope(factory) as session:
        trial = store.get_trial(session, store.get_sweep(session, sink.sweep_id), 1)
        assert (trial.status, trial.message) == ("diverged", "NaN loss at epoch 2")
        assert trial.params == {"optim.lr": 0.1}


def test_a_reported_epoch_keeps_its_first_report_and_drops_non_finite_values(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.trial_updated(TrialUpdate("t_00000", "running"))
    sink.epoch_reported("t_00000", 1, {"val_accuracy": 0.5, "val_loss": float("nan")})
    sink.epoch_reported("t_00000", 1, {"val_accuracy": 0.6, "train_loss": float("inf")})
    sink.epoch_reported("t_00000", 2, {"val_accuracy": 0.7})
    with session_scope(factory) as session:
        trial = store.get_trial(session, store.get_sweep(session, sink.sweep_id), 1)
        assert [(e.epoch, e.metrics) for e in trial.epochs] == [
            (1, {"val_accuracy": 0.5}),  # the re-run of epoch 1 (a resume) is not stored again
            (2, {"val_accuracy": 0.7}),
        ]


def test_a_sink_batch_is_one_transaction_all_or_nothing(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    with sink.batch():
        sink.trial_updated(TrialUpdate("t_00000", "running", {"optim.lr": 0.1}))
        sink.epoch_reported("t_00000", 1, {"val_accuracy": 0.5})
        with session_scope(factory) as session:  # another connection sees nothing yet
            assert store.trial_counts(session, store.get_sweep(session, sink.sweep_id)) == {}
        assert sink.cancel_requested() is False  # its own transaction, outside the batch
    with pytest.raises(RuntimeError), sink.batch():
        sink.epoch_reported("t_00000", 2, {"val_accuracy": 0.6})
        sink.trial_updated(TrialUpdate("t_00000", "completed"))
        raise RuntimeError("the driver died mid-batch")
    with session_scope(factory) as session:
        trial = store.get_trial(session, store.get_sweep(session, sink.sweep_id), 1)
        assert trial.status == "running"
        assert [(e.epoch, e.metrics) for e in trial.epochs] == [(1, {"val_accuracy": 0.5})]


def test_the_sweep_version_changes_with_every_write_and_only_then(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))

    def version() -> str:
        with session_scope(factory) as session:
            return store.sweep_version(session, sink.sweep_id)

    seen = [version()]
    assert version() == seen[0]  # reading changes nothing
    for write in (
        lambda: sink.sweep_started("/tmp/exp"),
        lambda: sink.trial_updated(TrialUpdate("t_00000", "running", {"optim.lr": 0.1})),
        lambda: sink.epoch_reported("t_00000", 1, {"val_accuracy": 0.5}),
        lambda: sink.epoch_reported("t_00000", 2, {"val_accuracy": 0.6}),
        lambda: sink.trial_updated(TrialUpdate("t_00000", "completed")),
        lambda: sink.sweep_ended("completed", "", None),
    ):
        write()
        seen.append(version())
        assert seen[-1] == version()
    assert len(set(seen)) == len(seen)
    with session_scope(factory) as session:
        assert store.sweep_status(session, sink.sweep_id) == "completed"
        for missing in (store.sweep_version, store.sweep_status):
            with pytest.raises(SweepNotFoundError):
                missing(session, 999)


def test_best_trial_uses_the_last_epoch_and_never_a_diverged_trial(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    for key, curve, status in [
        ("a_00000", [0.9, 0.95], "diverged"),
        ("a_00001", [0.8, 0.6], "completed"),  # best epoch 0.8, last 0.6
        ("a_00002", [0.5, 0.7], "running"),
    ]:
        sink.trial_updated(TrialUpdate(key, "running"))
        for epoch, acc in enumerate(curve, start=1):
            sink.epoch_reported(key, epoch, {"val_accuracy": acc, "val_loss": 1 - acc})
        sink.trial_updated(TrialUpdate(key, status))  # type: ignore[arg-type]
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        best = store.best_trial(session, sweep, "val_accuracy", "maximize")
        assert best is not None and (best.trial.key, best.value) == ("a_00002", 0.7)
        low = store.best_trial(session, sweep, "val_loss", "minimize")
        assert low is not None and low.trial.key == "a_00002"


def test_sweep_end_closes_open_trials_and_is_final(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.sweep_started("/tmp/exp")
    sink.trial_updated(TrialUpdate("t_00000", "running"))
    sink.sweep_ended("cancelled", "cancelled by user", None)
    sink.sweep_ended("completed", "late duplicate", None)
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert sweep.status == "cancelled"
        assert store.trial_counts(session, sweep) == {"cancelled": 1}


def test_a_sweep_started_over_fails_the_trials_its_lost_driver_left_open(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.sweep_started("/tmp/exp")
    sink.trial_updated(TrialUpdate("t_00000", "running"))
    sink.trial_updated(TrialUpdate("t_00001", "completed"))
    sink.sweep_started("/tmp/exp", over=True)  # resumed with nothing on storage
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert store.trial_counts(session, sweep) == {"failed": 1, "completed": 1}
        assert "started over" in store.get_trial(session, sweep, 1).message


def test_cancel_request_is_seen_by_the_sink_and_refused_once_completed(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    assert not sink.cancel_requested()
    with session_scope(factory) as session:
        store.request_cancel(session, sink.sweep_id)
    assert sink.cancel_requested()
    done = DatabaseSink(factory, new_sweep(factory))
    done.sweep_ended("completed", "", None)
    with pytest.raises(SweepFinishedError), session_scope(factory) as session:
        store.request_cancel(session, done.sweep_id)


def test_pagination_and_status_filter(factory) -> None:
    ids = [new_sweep(factory) for _ in range(5)]
    DatabaseSink(factory, ids[1]).sweep_ended("completed", "", None)
    with session_scope(factory) as session:
        page, count = store.list_sweeps(session, status=None, limit=2, offset=1)
        assert ([s.id for s in page], count) == ([ids[3], ids[2]], 5)
        done, n = store.list_sweeps(session, status="completed", limit=10, offset=0)
        assert ([s.id for s in done], n) == ([ids[1]], 1)


def test_trial_numbers_follow_tune_ids(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    for key in ("x_00002", "x_00000", "odd"):
        sink.trial_updated(TrialUpdate(key, "pending"))
    with session_scope(factory) as session:
        trials, _ = store.list_trials(
            session, store.get_sweep(session, sink.sweep_id), status=None, limit=10, offset=0
        )
        assert [(t.number, t.key) for t in trials] == [(1, "x_00000"), (3, "x_00002"), (4, "odd")]
