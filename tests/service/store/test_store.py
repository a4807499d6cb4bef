"""The storage layer and the database sink: one contract, run on a real SQLite file and on a
real PostgreSQL database (no Ray, no MLflow)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
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
    sink.trial_updated(TrialUpdate(1, "running", {"optim.lr": 0.1}))
    sink.trial_updated(TrialUpdate(1, "diverged", message="NaN loss at epoch 2"))
    sink.trial_updated(TrialUpdate(1, "running", attempt=2))  # a replay after resume
    with session_scope(factory) as session:
        trial = store.get_trial(session, store.get_sweep(session, sink.sweep_id), 1)
        assert (trial.status, trial.message) == ("diverged", "NaN loss at epoch 2")
        assert trial.params == {"optim.lr": 0.1}


def test_a_reported_epoch_keeps_its_first_report_and_drops_non_finite_values(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.trial_updated(TrialUpdate(1, "running"))
    sink.epoch_reported(1, 1, {"val_accuracy": 0.5, "val_loss": float("nan")})
    sink.epoch_reported(1, 1, {"val_accuracy": 0.6, "train_loss": float("inf")})
    sink.epoch_reported(1, 2, {"val_accuracy": 0.7})
    with session_scope(factory) as session:
        trial = store.get_trial(session, store.get_sweep(session, sink.sweep_id), 1)
        assert [(e.epoch, e.metrics) for e in trial.epochs] == [
            (1, {"val_accuracy": 0.5}),  # the re-run of epoch 1 (a resume) is not stored again
            (2, {"val_accuracy": 0.7}),
        ]


def test_a_sink_batch_is_one_transaction_all_or_nothing(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    with sink.batch():
        sink.trial_updated(TrialUpdate(1, "running", {"optim.lr": 0.1}))
        sink.epoch_reported(1, 1, {"val_accuracy": 0.5})
        with session_scope(factory) as session:  # another connection sees nothing yet
            assert store.trial_counts(session, store.get_sweep(session, sink.sweep_id)) == {}
        assert sink.cancel_requested() is False  # its own transaction, outside the batch
    with pytest.raises(RuntimeError), sink.batch():
        sink.epoch_reported(1, 2, {"val_accuracy": 0.6})
        sink.trial_updated(TrialUpdate(1, "completed"))
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
        lambda: sink.trial_updated(TrialUpdate(1, "running", {"optim.lr": 0.1})),
        lambda: sink.epoch_reported(1, 1, {"val_accuracy": 0.5}),
        lambda: sink.epoch_reported(1, 2, {"val_accuracy": 0.6}),
        lambda: sink.trial_updated(TrialUpdate(1, "completed")),
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
    for number, curve, status in [
        (1, [0.9, 0.95], "diverged"),
        (2, [0.8, 0.6], "completed"),  # best epoch 0.8, last 0.6
        (3, [0.5, 0.7], "running"),
    ]:
        sink.trial_updated(TrialUpdate(number, "running"))
        for epoch, acc in enumerate(curve, start=1):
            sink.epoch_reported(number, epoch, {"val_accuracy": acc, "val_loss": 1 - acc})
        sink.trial_updated(TrialUpdate(number, status))  # type: ignore[arg-type]
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        best = store.best_trial(session, sweep, "val_accuracy", "maximize")
        assert best is not None and (best.trial.number, best.value, best.epoch) == (3, 0.7, 2)
        assert best.trial.key == "trial-00003"
        low = store.best_trial(session, sweep, "val_loss", "minimize")
        assert low is not None and low.trial.number == 3


def test_best_trial_is_never_one_that_failed_after_the_top_value_and_ties_go_low(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    for number, acc, status in [(1, 0.99, "failed"), (2, 0.8, "stopped"), (3, 0.8, "completed")]:
        sink.trial_updated(TrialUpdate(number, "running"))
        sink.epoch_reported(number, 1, {"val_accuracy": acc})
        sink.trial_updated(TrialUpdate(number, status))  # type: ignore[arg-type]
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        best = store.best_trial(session, sweep, "val_accuracy", "maximize")
        assert best is not None and (best.trial.number, best.value) == (2, 0.8)
        assert store.best_trial(session, sweep, "val_loss", "maximize") is None  # never reported


def test_trials_returns_statuses_last_epochs_and_curves_in_number_order(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.trial_updated(TrialUpdate(3, "pending", {"optim.lr": 0.3}))
    sink.trial_updated(TrialUpdate(1, "running", {"optim.lr": 0.1}))
    sink.epoch_reported(1, 1, {"val_accuracy": 0.5, "val_loss": 0.9})
    sink.epoch_reported(1, 2, {"val_loss": 0.8})  # no accuracy at epoch 2
    sink.epoch_reported(1, 3, {"val_accuracy": float("nan"), "val_loss": 0.7})  # dropped on write
    sink.trial_updated(TrialUpdate(2, "running", {"optim.lr": 0.2}))
    sink.epoch_reported(2, 1, {"val_accuracy": 0.6})
    sink.epoch_reported(2, 2, {"val_accuracy": 0.7})
    sink.trial_updated(TrialUpdate(2, "stopped"))
    other = DatabaseSink(factory, new_sweep(factory))  # another sweep's trial 1 stays its own
    other.trial_updated(TrialUpdate(1, "failed", {"optim.lr": 0.01}))
    other.epoch_reported(1, 1, {"val_accuracy": 0.1})
    first, second, third = sink.trials("val_accuracy")
    assert (first.number, first.status, first.params) == (1, "running", {"optim.lr": 0.1})
    assert (first.epoch, first.curve, first.value) == (3, {1: 0.5}, None)
    assert (second.number, second.status, second.epoch) == (2, "stopped", 2)
    assert (second.curve, second.value) == ({1: 0.6, 2: 0.7}, 0.7)
    assert (third.number, third.status, third.epoch, third.curve) == (3, "pending", 0, {})
    assert [t.curve for t in sink.trials("val_loss")] == [{1: 0.9, 2: 0.8, 3: 0.7}, {}, {}]
    assert [(t.number, t.curve) for t in other.trials("val_accuracy")] == [(1, {1: 0.1})]
    with sink.batch():  # in a batch, the batch's own writes are seen
        sink.epoch_reported(3, 1, {"val_accuracy": 0.9})
        assert sink.trials("val_accuracy")[2].curve == {1: 0.9}
    assert DatabaseSink(factory, new_sweep(factory)).trials("val_accuracy") == []


def test_sweep_end_closes_open_trials_and_is_final(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.sweep_started("/tmp/exp")
    sink.trial_updated(TrialUpdate(1, "running"))
    sink.sweep_ended("cancelled", "cancelled by user", None)
    sink.sweep_ended("completed", "late duplicate", None)
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert sweep.status == "cancelled"
        assert store.trial_counts(session, sweep) == {"cancelled": 1}


def test_a_sweep_started_again_leaves_the_open_trials_to_report_again(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    sink.sweep_started("/tmp/exp")
    sink.trial_updated(TrialUpdate(1, "running", {"optim.lr": 0.1}))
    sink.epoch_reported(1, 1, {"val_accuracy": 0.5})
    sink.trial_updated(TrialUpdate(2, "completed"))
    sink.sweep_started("/tmp/exp")  # resumed, or started over: the same numbered trials re-run
    assert [(t.number, t.status) for t in sink.trials("val_accuracy")] == [
        (1, "running"),
        (2, "completed"),
    ]
    sink.trial_updated(TrialUpdate(1, "running", attempt=2))
    sink.epoch_reported(1, 2, {"val_accuracy": 0.6})
    sink.trial_updated(TrialUpdate(1, "completed"))
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert sweep.status == "running"
        assert store.trial_counts(session, sweep) == {"completed": 2}
        trial = store.get_trial(session, sweep, 1)
        assert (trial.attempts, trial.message, [e.epoch for e in trial.epochs]) == (2, "", [1, 2])


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


def test_trials_are_rows_by_number_keyed_by_trial_key(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    for number in (3, 1, 12):
        sink.trial_updated(TrialUpdate(number, "pending"))
    sink.epoch_reported(7, 1, {"val_accuracy": 0.5})  # an epoch before its trial's update
    sink.trial_updated(TrialUpdate(7, "running", {"optim.lr": 0.1}))
    with session_scope(factory) as session:
        trials, _ = store.list_trials(
            session, store.get_sweep(session, sink.sweep_id), status=None, limit=10, offset=0
        )
        assert [(t.number, t.key) for t in trials] == [
            (1, "trial-00001"),
            (3, "trial-00003"),
            (7, "trial-00007"),
            (12, "trial-00012"),
        ]
        assert [(t.status, len(t.epochs)) for t in trials][2] == ("running", 1)


def test_sweep_ended_stores_the_key_of_the_best_trial_it_names(factory) -> None:
    sink = DatabaseSink(factory, new_sweep(factory))
    for number in (1, 2):
        sink.trial_updated(TrialUpdate(number, "completed"))
    sink.sweep_ended("completed", "", 2)
    nobody = DatabaseSink(factory, new_sweep(factory))
    nobody.sweep_ended("completed", "", None)
    with session_scope(factory) as session:
        assert store.get_sweep(session, sink.sweep_id).best_trial_key == "trial-00002"
        assert store.get_sweep(session, nobody.sweep_id).best_trial_key is None


def test_a_standby_polled_while_it_is_claimed_sees_itself_claimed_or_waiting_never_neither(
    factory,
) -> None:
    """The claim commits from another connection right after the poll's first statement
    (where a poll of two statements read the sweep, then the standby)."""
    sweep_id = new_sweep(factory)
    with session_scope(factory) as session:
        store.add_standby(session, "standby-1")
    armed = [True]

    def claim_in_between(*_: object) -> None:
        if armed[0]:
            armed[0] = False
            with session_scope(factory) as other:
                assert store.claim_standby(other, sweep_id, "standby-1", None, count=False)

    engine = factory.kw["bind"]
    event.listen(engine, "after_cursor_execute", claim_in_between)
    try:
        with session_scope(factory) as session:
            seen = store.standby_poll(session, "standby-1")
    finally:
        event.remove(engine, "after_cursor_execute", claim_in_between)
    assert not armed[0]  # the claim landed during the poll
    assert seen in ((None, True), (sweep_id, False))  # before the claim, or after it
    with session_scope(factory) as session:
        assert store.standby_poll(session, "standby-1") == (sweep_id, False)
