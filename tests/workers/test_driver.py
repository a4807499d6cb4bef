"""Sweeps run end to end on a real Ray cluster, tracked on a real MLflow server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.workers.sweeps import RecordingSink, digits_spec
from workers.driver import run_sweep
from workers.spec import SweepSpec


@pytest.fixture(scope="module")
def ray_session(ray_cluster) -> Iterator[None]:
    ray.init(address=ray_cluster.address, log_to_driver=False)
    yield
    ray.shutdown()


def sweep(spec: SweepSpec, sink: RecordingSink, mlflow_uri: str, tmp: Path) -> tuple[str, str]:
    sweep_id = uuid.uuid4().hex[:8]
    status = run_sweep(
        spec,
        sink,
        sweep_id=sweep_id,
        tracking_uri=mlflow_uri,
        mlflow_experiment="worker-tests",
        storage_path=str(tmp),
    )
    return sweep_id, status


def runs_of(uri: str, sweep_id: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("worker-tests")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`sweeps.sweep_id` = '{sweep_id}'", ViewType.ALL
    )
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    return client, parents, children


@pytest.mark.slow
def test_grid_sweep_completes_every_trial_with_one_run_per_trial(
    ray_session, mlflow_server, tmp_path
) -> None:
    spec = digits_spec({"optim.lr": [0.01, 0.1], "model.norm": ["none", "batch"]}, method="grid")
    sink = RecordingSink()
    sweep_id, status = sweep(spec, sink, mlflow_server.uri, tmp_path)

    assert status == "completed"
    assert sink.ended is not None and sink.ended[0] == "completed"
    assert set(sink.final_status().values()) == {"completed"}
    assert len(sink.final_status()) == 4
    for key, epochs in sink.epochs.items():
        assert sorted(epochs) == [1, 2, 3], key
    client, parents, children = runs_of(mlflow_server.uri, sweep_id)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]
