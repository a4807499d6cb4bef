"""MLflow tracking of sweeps against a real MLflow server."""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.conftest import free_port
from tests.workers.sweeps import digits_spec
from workers.tracking import TRACKING_ENV, SweepTracker, close_sweep_runs

SPEC = digits_spec({"optim.lr": [0.01, 0.1]}, method="grid")


def test_resumed_tracker_reuses_parent_and_child_runs(mlflow_server) -> None:
    sweep_uid = uuid.uuid4().hex[:8]
    first = SweepTracker(mlflow_server.uri, "tracking-tests", sweep_uid)
    parent = first.start_sweep(SPEC)
    child = first.start_trial("t_00000", "digits-sweep #1 lr=0.01", {"optim.lr": 0.01})
    first.log_trial(child, [(1, {"val_accuracy": 0.5, "val_loss": 1.0})])

    again = SweepTracker(mlflow_server.uri, "tracking-tests", sweep_uid)
    assert again.start_sweep(SPEC) == parent
    assert again.start_trial("t_00000", "digits-sweep #1 lr=0.01", {"optim.lr": 0.01}) == child
    again.log_trial(child, end=("diverged", "diverged at epoch 2"))
    again.end_sweep("completed", None, "val_accuracy")

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(child)  # type: ignore[arg-type]
    assert run.info.status == "FINISHED"
    assert run.data.tags["sweeps.outcome"] == "diverged"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["optim.lr"] == "0.01"
    assert client.get_run(parent).info.status == "FINISHED"  # type: ignore[arg-type]


def test_a_sweep_no_driver_ran_before_opens_its_run_without_looking_for_one(
    mlflow_server,
) -> None:
    tracker = SweepTracker(mlflow_server.uri, "tracking-tests", uuid.uuid4().hex[:8])
    searched: list[str] = []
    search_runs = tracker.client.search_runs

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        searched.append(kw.get("filter_string", args[1] if len(args) > 1 else ""))
        return search_runs(*args, **kw)

    tracker.client.search_runs = counting  # type: ignore[method-assign]
    parent = tracker.start_sweep(SPEC, resumed=False)
    assert parent is not None and searched == []
    again = SweepTracker(mlflow_server.uri, "tracking-tests", tracker.sweep_uid)
    assert again.start_sweep(SPEC) == parent  # a resumed driver finds it


def test_resumed_tracker_skips_epochs_the_reopened_run_already_holds(mlflow_server) -> None:
    sweep_uid = uuid.uuid4().hex[:8]
    first = SweepTracker(mlflow_server.uri, "tracking-tests", sweep_uid)
    first.start_sweep(SPEC)
    child = first.start_trial("t_00000", "a", {})
    for epoch in (1, 2):
        first.log_trial(child, [(epoch, {"val_accuracy": 0.5, "val_loss": 1.0})])

    again = SweepTracker(mlflow_server.uri, "tracking-tests", sweep_uid)
    again.start_sweep(SPEC)
    assert again.start_trial("t_00000", "a", {}) == child
    for epoch in (2, 3):  # resumed from the checkpoint of epoch 1: epoch 2 comes again
        again.log_trial(child, [(epoch, {"val_accuracy": 0.6, "val_loss": 0.9})])

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    history = client.get_metric_history(child, "val_accuracy")  # type: ignore[arg-type]
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.5), (3, 0.6)]


def test_close_sweep_runs_closes_every_open_run_of_the_sweep(mlflow_server) -> None:
    sweep_uid = uuid.uuid4().hex[:8]
    tracker = SweepTracker(mlflow_server.uri, "tracking-tests", sweep_uid)
    tracker.start_sweep(SPEC)
    tracker.start_trial("t_00000", "a", {})
    tracker.start_trial("t_00001", "b", {})  # the driver vanished: all three stay RUNNING

    assert close_sweep_runs(mlflow_server.uri, sweep_uid, "KILLED") == 3
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = client.search_runs(
        [tracker.experiment_id or ""], f"tags.`sweeps.sweep_uid` = '{sweep_uid}'", ViewType.ALL
    )
    assert {r.info.status for r in runs} == {"KILLED"}
    assert close_sweep_runs(mlflow_server.uri, sweep_uid, "KILLED") == 0


def test_one_request_carries_a_trials_configuration_epochs_and_outcome(mlflow_server) -> None:
    tracker = SweepTracker(mlflow_server.uri, "tracking-tests", uuid.uuid4().hex[:8])
    tracker.start_sweep(SPEC)
    child = tracker.start_trial("t_00000", "a", {"optim.lr": 0.1}, defer_params=True)
    sent: list[tuple[int, int, int]] = []
    log_batch = tracker.client.log_batch

    def counting(run_id, metrics=(), params=(), tags=(), **kw):  # type: ignore[no-untyped-def]
        sent.append((len(metrics), len(params), len(tags)))
        return log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)

    tracker.client.log_batch = counting  # type: ignore[method-assign]
    epochs = [(e, {"val_accuracy": 0.1 * e, "val_loss": 1.0 / e}) for e in (1, 2, 3)]
    tracker.log_trial(child, epochs, end=("completed", ""))

    assert sent == [(6, 1, 1)]  # 3 epochs x 2 metrics, the configuration, the outcome tag
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(child)  # type: ignore[arg-type]
    assert (run.info.status, run.data.params, run.data.tags["sweeps.outcome"]) == (
        "FINISHED",
        {"optim.lr": "0.1"},
        "completed",
    )
    history = client.get_metric_history(child, "val_accuracy")  # type: ignore[arg-type]
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_a_run_made_by_a_failed_create_request_is_closed_with_the_sweep(mlflow_server) -> None:
    sweep_uid = uuid.uuid4().hex[:8]
    tracker = SweepTracker(mlflow_server.uri, "tracking-tests", sweep_uid)
    tracker.start_sweep(SPEC)
    create_run = tracker.client.create_run
    lost: list[str] = []

    def reply_lost(*args, **kw):  # type: ignore[no-untyped-def]
        run = create_run(*args, **kw)  # the server made the run; its reply never arrived
        if not lost:
            lost.append(run.info.run_id)
            raise ConnectionError("connection reset by peer")
        return run

    tracker.client.create_run = reply_lost  # type: ignore[method-assign]
    child = tracker.start_trial("t_00000", "a", {})  # retried: a second run
    tracker.log_trial(child, end=("completed", ""))
    tracker.end_sweep("completed", None, "val_accuracy")

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    assert client.get_run(lost[0]).info.status == "FINISHED"  # not left RUNNING


def test_tracking_outage_is_a_warning_not_an_error(monkeypatch, caplog) -> None:
    for key, value in TRACKING_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    start = time.monotonic()
    tracker = SweepTracker(f"http://127.0.0.1:{free_port()}", "nowhere", "x")
    assert tracker.start_sweep(SPEC) is None
    assert tracker.start_trial("t_00000", "a", {"optim.lr": 0.1}) is None
    tracker.log_trial(None, [(1, {"val_accuracy": 0.5})])
    tracker.end_sweep("completed", None, "val_accuracy")
    assert time.monotonic() - start < 30
    assert any("MLflow" in r.message for r in caplog.records)


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
