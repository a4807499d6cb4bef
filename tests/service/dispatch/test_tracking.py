"""The tracking sender: what the database holds of a sweep reaches a real MLflow server, once."""

from __future__ import annotations

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.cli.stack import free_port
from service.dispatch.tracking import TrackingSender
from service.job.sink import DatabaseSink
from service.store import tracking as journal
from service.store.db import session_scope
from service.store.models import MlflowRun
from tests.specs import digits_body
from workers.errors import TrackingError
from workers.events import TrialUpdate, trial_key
from workers.spec import SweepSpec
from workers.tracking import MlflowRuns

A, B = 1, 2
"""Trial numbers."""
SPEC = SweepSpec.model_validate(digits_body({"optim.lr": [0.01, 10.0]}, method="grid"))


def new_sweep(factory: sessionmaker[Session]) -> DatabaseSink:
    with session_scope(factory) as session:
        sweep, _ = store.create_sweep(session, SPEC)
        session.flush()
        sweep_id = sweep.id
    sink = DatabaseSink(factory, sweep_id)
    sink.sweep_started("/tmp/experiment")
    return sink


def trial(sink: DatabaseSink, number: int, status: str, lr: float, message: str = "") -> None:
    config = SPEC.trial_config({"optim.lr": lr}).flatten()
    name = f"digits-sweep #{number} lr={lr}"
    update_ = TrialUpdate(number, status, {"optim.lr": lr}, name, config, message, attempt=1)  # type: ignore[arg-type]
    sink.trial_updated(update_)


def epoch(sink: DatabaseSink, number: int, n: int) -> None:
    sink.epoch_reported(number, n, {"val_accuracy": 0.5 + n / 10, "val_loss": 1.0 / n})


def finished_sweep(factory: sessionmaker[Session]) -> DatabaseSink:
    """A sweep as its driver leaves it: A completed 3 epochs, B diverged after one."""
    sink = new_sweep(factory)
    trial(sink, A, "running", 0.01)
    trial(sink, B, "running", 10.0)
    for n in (1, 2, 3):
        epoch(sink, A, n)
    epoch(sink, B, 1)
    trial(sink, A, "completed", 0.01)
    trial(sink, B, "diverged", 10.0, "val_loss is not finite at epoch 2")
    sink.sweep_ended("completed", "2 trials: 1 completed, 1 diverged", A)
    return sink


def runs_of(uri: str, factory: sessionmaker[Session], sweep_id: int) -> tuple[list, list]:
    with session_scope(factory) as session:
        uid = store.get_sweep(session, sweep_id).uid
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`sweeps.sweep_uid` = '{uid}'", ViewType.ALL)
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    return parents, children


def steps(uri: str, run_id: str, metric: str = "val_accuracy") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def backlog(factory: sessionmaker[Session], sweep_id: int) -> int:
    with session_scope(factory) as session:
        return journal.backlog(session, store.get_sweep(session, sweep_id))


def test_a_sweep_reaches_mlflow_nested_complete_and_closed(factory, mlflow_server) -> None:
    sink = finished_sweep(factory)
    assert backlog(factory, sink.sweep_id) == 3 + (1 + 1 + 3 + 1) + (1 + 1 + 1 + 1)

    TrackingSender(factory, MlflowRuns(mlflow_server.uri)).deliver(sink.sweep_id)

    (parent,), children = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    by_key = {c.data.tags["sweeps.trial_key"]: c for c in children}
    assert set(by_key) == {trial_key(A), trial_key(B)}
    assert parent.info.status == "FINISHED" and parent.data.tags["sweeps.outcome"] == "completed"
    assert parent.data.tags["sweeps.best_trial_key"] == trial_key(A)
    assert parent.data.tags["sweeps.best_run_id"] == by_key[trial_key(A)].info.run_id
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(0.8)
    assert parent.data.params["sweep.num_trials"] == "2"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    a, b = by_key[trial_key(A)], by_key[trial_key(B)]
    assert (a.info.status, a.data.tags["sweeps.outcome"]) == ("FINISHED", "completed")
    assert (b.info.status, b.data.tags["sweeps.outcome"]) == ("FINISHED", "diverged")
    assert b.data.tags["sweeps.message"] == "val_loss is not finite at epoch 2"
    assert a.data.params == {
        k: str(v) for k, v in SPEC.trial_config({"optim.lr": 0.01}).flatten().items()
    }
    assert a.info.run_name == "digits-sweep #1 lr=0.01"
    assert steps(mlflow_server.uri, a.info.run_id) == [1, 2, 3]
    assert steps(mlflow_server.uri, b.info.run_id, "val_loss") == [1]
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert sweep.mlflow_done and sweep.parent_run_id == parent.info.run_id
        assert store.get_trial(session, sweep, 1).mlflow_run_id == a.info.run_id
    assert backlog(factory, sink.sweep_id) == 0


def test_delivery_follows_a_running_sweep_and_repeats_nothing(factory, mlflow_server) -> None:
    sender = TrackingSender(factory, MlflowRuns(mlflow_server.uri))
    sink = new_sweep(factory)
    trial(sink, A, "running", 0.01)
    epoch(sink, A, 1)
    sender.deliver(sink.sweep_id)
    epoch(sink, A, 2)
    sender.deliver(sink.sweep_id)
    (parent,), (child,) = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    assert parent.info.status == child.info.status == "RUNNING"
    assert steps(mlflow_server.uri, child.info.run_id) == [1, 2]

    # A sender that crashed after MLflow took its requests, before it could record them.
    with session_scope(factory) as session:
        session.execute(
            update(MlflowRun)
            .where(MlflowRun.sweep_id == sink.sweep_id)
            .values(params_sent=False, logged_step=0, create_attempts=1)
        )
        session.execute(
            update(MlflowRun)
            .where(MlflowRun.sweep_id == sink.sweep_id, MlflowRun.key == trial_key(A))
            .values(run_id=None)
        )
    epoch(sink, A, 3)
    trial(sink, A, "completed", 0.01)
    sink.sweep_ended("completed", "1 trial: 1 completed", A)
    sender.deliver(sink.sweep_id)

    (parent,), (again,) = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    assert again.info.run_id == child.info.run_id  # found, not made twice
    assert steps(mlflow_server.uri, again.info.run_id) == [1, 2, 3]  # each epoch once
    assert (parent.info.status, again.info.status) == ("FINISHED", "FINISHED")


def test_with_mlflow_down_everything_waits_and_the_backlog_says_how_much(
    factory, mlflow_server
) -> None:
    sink = finished_sweep(factory)
    down = TrackingSender(factory, MlflowRuns(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TrackingError):
        down.deliver(sink.sweep_id)
    down.deliver_due()  # notes the error on the sweep and backs off
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert "MLflow at" in sweep.mlflow_error and not sweep.mlflow_done
    assert backlog(factory, sink.sweep_id) == 13

    TrackingSender(factory, MlflowRuns(mlflow_server.uri)).deliver_due()  # MLflow is back

    parents, children = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]
    assert backlog(factory, sink.sweep_id) == 0
    with session_scope(factory) as session:
        assert store.get_sweep(session, sink.sweep_id).mlflow_error == ""


def test_a_cancelled_sweep_closes_its_runs_killed(factory, mlflow_server) -> None:
    sink = new_sweep(factory)
    trial(sink, A, "running", 0.01)
    epoch(sink, A, 1)
    with session_scope(factory) as session:
        store.request_cancel(session, sink.sweep_id)
        store.finish_sweep(session, sink.sweep_id, "failed", "job gone")  # cancelling wins
        store.close_open_trials(session, sink.sweep_id, "cancelled", "the sweep was cancelled")

    TrackingSender(factory, MlflowRuns(mlflow_server.uri)).deliver(sink.sweep_id)

    (parent,), (child,) = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    assert (parent.info.status, parent.data.tags["sweeps.outcome"]) == ("KILLED", "cancelled")
    assert (child.info.status, child.data.tags["sweeps.outcome"]) == ("KILLED", "cancelled")
