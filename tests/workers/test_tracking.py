"""The MLflow requests of the tracking sender, against a real MLflow server."""

from __future__ import annotations

import socket
import time
import uuid

import pytest
from mlflow.tracking import MlflowClient

from service.cli.stack import free_port
from workers.errors import TrackingError, TrackingRejectedError
from workers.tracking import (
    PARENT_TAG,
    MlflowRuns,
    Point,
    outcome_tags,
    parent_tags,
    trial_tags,
)


@pytest.fixture
def runs(mlflow_server) -> MlflowRuns:
    return MlflowRuns(mlflow_server.uri)


def test_a_parent_and_a_nested_trial_run_are_made_and_found_again(runs: MlflowRuns) -> None:
    uid = uuid.uuid4().hex
    experiment = runs.experiment("tracking-tests")
    assert runs.experiment("tracking-tests") == experiment  # got, not made again
    parent = runs.create_run(experiment, "sweep", parent_tags(uid, "grid"))
    child = runs.create_run(experiment, "sweep #1", trial_tags(uid, "t_00000", parent))

    assert runs.find_run(experiment, {"sweeps.sweep_uid": uid, "sweeps.role": "sweep"}) == parent
    assert runs.find_run(experiment, {"sweeps.sweep_uid": uid, "sweeps.trial_key": "t_00000"}) == (
        child
    )
    assert runs.find_run(experiment, {"sweeps.sweep_uid": uid, "sweeps.trial_key": "t_9"}) is None
    run = MlflowClient(runs.uri).get_run(child)
    assert run.data.tags[PARENT_TAG] == parent and run.info.run_name == "sweep #1"


def test_a_batch_sent_twice_is_stored_once(runs: MlflowRuns) -> None:
    experiment = runs.experiment("tracking-tests")
    run_id = runs.create_run(experiment, "twice", {})
    points = [Point("val_loss", 1.0 / step, 1_700_000_000_000 + step, step) for step in (1, 2, 3)]
    params = {"optim.lr": 0.1, "model.norm": "batch"}

    for _ in range(2):  # a sender that crashed before it could record the first delivery
        runs.log(run_id, points, params, outcome_tags("completed", ""))
    runs.close(run_id, "FINISHED")
    runs.close(run_id, "FINISHED")

    client = MlflowClient(runs.uri)
    history = client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    run = client.get_run(run_id)
    assert run.data.params == {"optim.lr": "0.1", "model.norm": "batch"}
    assert run.data.tags["sweeps.outcome"] == "completed" and run.info.status == "FINISHED"


def test_a_large_batch_is_split_within_mlflows_limits(runs: MlflowRuns) -> None:
    run_id = runs.create_run(runs.experiment("tracking-tests"), "large", {})
    points = [
        Point(f"m{k}", float(step), 1_700_000_000_000, step)
        for step in range(1, 201)
        for k in range(6)
    ]
    params = {f"p{i}": i for i in range(150)}
    runs.log(run_id, points, params)

    client = MlflowClient(runs.uri)
    assert len(client.get_metric_history(run_id, "m5")) == 200
    assert len(client.get_run(run_id).data.params) == 150


def test_a_refused_request_is_rejected_and_an_unreachable_server_an_error(
    runs: MlflowRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = runs.create_run(runs.experiment("tracking-tests"), "refused", {})
    runs.log(run_id, params={"optim.lr": 0.1})
    with pytest.raises(TrackingRejectedError, match="refused"):
        runs.log(run_id, params={"optim.lr": 0.2})  # MLflow never changes a parameter

    down = MlflowRuns(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingError, match="failed to get or create experiment") as caught:
        down.experiment("tracking-tests")
    assert not isinstance(caught.value, TrackingRejectedError)


def test_a_server_that_never_answers_fails_a_request_within_seconds() -> None:
    """MLflow's client is told to try once with a 5 s timeout (TRACKING_ENV)."""
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        runs = MlflowRuns(f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(TrackingError):
            runs.experiment("tracking-tests")
        assert time.monotonic() - start < 10
