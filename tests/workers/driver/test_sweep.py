"""Sweeps run end to end on a real Ray cluster, tracked on a real MLflow server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.workers.sweeps import RecordingSink, digits_spec, runs_of, sweep
from workers.driver.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_grid_sweep_completes_every_trial_with_one_run_per_trial(
    ray_session, mlflow_server, tmp_path
) -> None:
    spec = digits_spec({"optim.lr": [0.01, 0.1], "model.norm": ["none", "batch"]}, method="grid")
    sink = RecordingSink()
    sweep_uid, status = sweep(spec, sink, mlflow_server.uri, tmp_path)

    assert status == "completed"
    assert sink.ended is not None and sink.ended[0] == "completed"
    assert set(sink.final_status().values()) == {"completed"}
    assert len(sink.final_status()) == 4
    for key, epochs in sink.epochs.items():
        assert sorted(epochs) == [1, 2, 3], key
    client, parents, children = runs_of(mlflow_server.uri, sweep_uid)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]


def alive_trial_worker_pids(address: str) -> list[int]:
    """Process ids of the live Tune trial actors (the workers running ``run_trial``)."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True)
    return [
        a.pid
        for a in actors
        if "run_trial" in (a.class_name or "") or "ImplicitFunc" in (a.class_name or "")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_sweeps_run_their_trials(method, ray_session, mlflow_server, tmp_path):
    params = {
        "optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.2},
        "model.norm": ["none", "layer"],
    }
    spec = digits_spec(params, method=method, max_trials=3, epochs=2)
    sink = RecordingSink()
    sweep_uid, status = sweep(spec, sink, mlflow_server.uri, tmp_path)

    assert status == "completed"
    assert list(sink.final_status().values()) == ["completed"] * 3
    assert all(sorted(e) == [1, 2] for e in sink.epochs.values())
    assert sink.ended is not None and sink.ended[2] in sink.final_status()
    _, parents, children = runs_of(mlflow_server.uri, sweep_uid)
    assert len(children) == 3
    assert parents[0].data.tags["sweeps.best_trial_key"] == sink.ended[2]


@pytest.mark.slow
def test_asha_stops_trials_with_a_terrible_learning_rate(ray_session, mlflow_server, tmp_path):
    # One trial at a time, good learning rates first: the bad ones meet full rungs and stop.
    spec = digits_spec(
        {"optim.lr": [0.1, 0.2, 1e-5, 2e-5]},
        method="grid",
        epochs=4,
        max_concurrent=1,
        early_stopping={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    sink = RecordingSink()
    sweep_uid, status = sweep(spec, sink, mlflow_server.uri, tmp_path)

    assert status == "completed"
    by_lr = {sink.last_update(k).params["optim.lr"]: k for k in sink.final_status()}
    statuses = {lr: sink.final_status()[key] for lr, key in by_lr.items()}
    assert statuses[0.1] == "completed"
    assert "stopped" in {statuses[1e-5], statuses[2e-5]}
    for lr in (1e-5, 2e-5):
        if statuses[lr] == "stopped":
            assert len(sink.epochs[by_lr[lr]]) < 4
    _, _, children = runs_of(mlflow_server.uri, sweep_uid)
    outcomes = {c.data.tags["sweeps.trial_key"]: c.data.tags["sweeps.outcome"] for c in children}
    assert outcomes == sink.final_status()
    assert {c.info.status for c in children} == {"FINISHED"}


@pytest.mark.slow
def test_diverging_trial_is_flagged_and_never_best(ray_session, mlflow_server, tmp_path):
    spec = digits_spec(
        {"optim.lr": [10.0, 0.05]},
        method="grid",
        model={"arch": "mlp", "width": 256, "depth": 3},
        epochs=2,
    )
    sink = RecordingSink()
    sweep_uid, status = sweep(spec, sink, mlflow_server.uri, tmp_path)

    assert status == "completed"
    by_lr = {sink.last_update(k).params["optim.lr"]: k for k in sink.final_status()}
    diverged = sink.last_update(by_lr[10.0])
    assert diverged.status == "diverged"
    assert "diverged" in diverged.message
    assert sink.final_status()[by_lr[0.05]] == "completed"
    assert sink.ended is not None and sink.ended[2] == by_lr[0.05]
    _, parents, children = runs_of(mlflow_server.uri, sweep_uid)
    run = next(c for c in children if c.data.tags["sweeps.trial_key"] == by_lr[10.0])
    assert run.info.status == "FINISHED" and run.data.tags["sweeps.outcome"] == "diverged"
    assert parents[0].data.tags["sweeps.best_trial_key"] == by_lr[0.05]


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint(
    ray_cluster, ray_session, mlflow_server, tmp_path
):
    killed: list[int] = []

    def kill_on_epoch_2(sink: RecordingSink, key: str, epoch: int, metrics) -> None:
        if epoch == 2 and not killed:
            pids = alive_trial_worker_pids(ray_cluster.address)
            assert len(pids) == 1, pids  # one trial at a time: this one's worker
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    # The sink hears of epoch 2 through the driver's outbox, which lingers a quarter second
    # for writes to gather (progress.LINGER_S): epochs of ~10 ms each, so enough of them that
    # the trial is still training when the kill lands.
    epochs = 100
    spec = digits_spec({"optim.lr": [0.05]}, method="grid", epochs=epochs, max_concurrent=1)
    sink = RecordingSink(on_epoch=kill_on_epoch_2)
    sweep_uid, status = sweep(spec, sink, mlflow_server.uri, tmp_path)

    assert killed, "the worker was never killed"
    assert status == "completed"
    (key,) = sink.final_status()
    last = sink.last_update(key)
    assert last.status == "completed" and last.attempt >= 2
    assert sorted(sink.epochs[key]) == list(range(1, epochs + 1))
    client, _, children = runs_of(mlflow_server.uri, sweep_uid)
    assert [c.info.status for c in children] == ["FINISHED"]
    history = client.get_metric_history(children[0].info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # each epoch once


@pytest.mark.slow
def test_cancel_marks_running_trials_cancelled_and_runs_killed(
    ray_session, mlflow_server, tmp_path
):
    spec = digits_spec(
        {"optim.lr": [0.01, 0.02, 0.05, 0.1]}, method="grid", epochs=30, max_concurrent=2
    )
    sink = RecordingSink(cancel_after_epochs=2)
    sweep_uid, status = sweep(spec, sink, mlflow_server.uri, tmp_path)
    ended = time.monotonic()

    assert status == "cancelled"
    assert sink.cancel_at is not None and ended - sink.cancel_at < 30
    assert sink.ended is not None and sink.ended[0] == "cancelled"
    statuses = sink.final_status()
    assert "cancelled" in statuses.values()
    assert set(statuses.values()) <= {"cancelled", "completed"}
    _, parents, children = runs_of(mlflow_server.uri, sweep_uid)
    assert parents[0].info.status == "KILLED"
    expected = {"cancelled": "KILLED", "completed": "FINISHED"}  # a fast trial may finish first
    runs = {c.data.tags["sweeps.trial_key"]: c.info.status for c in children}
    assert runs and runs == {k: expected[statuses[k]] for k in runs}, (runs, statuses)
    assert "KILLED" in runs.values()


def reported_epochs(path: Path) -> dict[str, list[int]]:
    """``trial key -> epochs`` in the order the driver process reported them."""
    out: dict[str, list[int]] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        key, epoch = line.split()
        out.setdefault(key, []).append(int(epoch))
    return out


def start_driver_process(address: str, request: dict, tmp: Path) -> subprocess.Popen[bytes]:
    request_file = tmp / "request.json"
    request_file.write_text(json.dumps(request))
    cmd = [sys.executable, "-m", "tests.workers.driver.driver_process", address, str(request_file)]
    with open(tmp / "driver.log", "wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.mark.slow
def test_sweep_resumed_after_its_driver_was_killed_completes_every_trial(
    ray_cluster, ray_session, mlflow_server, tmp_path
):
    spec = digits_spec({"optim.lr": [0.02, 0.05, 0.1]}, method="grid", epochs=5)
    sweep_uid, epochs_file = uuid.uuid4().hex[:8], tmp_path / "epochs.txt"
    request = {
        "spec": spec.model_dump(mode="json"),
        "sweep_uid": sweep_uid,
        "tracking_uri": mlflow_server.uri,
        "mlflow_experiment": "worker-tests",
        "storage_path": str(tmp_path / "storage"),
        "epochs_file": str(epochs_file),
    }
    driver = start_driver_process(ray_cluster.address, request, tmp_path)
    try:  # kill it once a trial has rotated its first checkpoint away (epoch 2)
        deadline = time.monotonic() + 240
        while not any(max(e) >= 2 for e in reported_epochs(epochs_file).values()):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "no trial reached epoch 2"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    before = reported_epochs(epochs_file)

    sink = RecordingSink()
    status = run_sweep(
        spec,
        sink,
        sweep_uid=sweep_uid,
        tracking_uri=mlflow_server.uri,
        mlflow_experiment="worker-tests",
        storage_path=request["storage_path"],
        resume=True,
    )

    assert status == "completed", sink.ended
    statuses = sink.final_status()
    assert len(statuses) == 3 and set(statuses.values()) == {"completed"}, sink.updates
    for key in statuses:
        after = sorted(sink.epochs.get(key, {}))
        if after:  # the resumed driver went on from a checkpoint: repeats allowed, no gaps
            assert after == list(range(after[0], 6)), (key, after)
        assert sorted(set(before.get(key, [])) | set(after)) == [1, 2, 3, 4, 5], (key, before)
    client, parents, children = runs_of(mlflow_server.uri, sweep_uid)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["sweeps.trial_key"] for c in children) == sorted(statuses)
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]  # each epoch logged once
