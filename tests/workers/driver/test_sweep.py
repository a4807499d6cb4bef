"""Sweeps run end to end on a real Ray cluster, reported to a recording sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.workers.sweeps import RecordingSink, digits_spec, sweep
from workers.driver.sweep import FORMAT_FILE, experiment_name, run_sweep
from workers.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_grid_sweep_completes_every_trial_with_one_run_per_trial(ray_session, tmp_path) -> None:
    spec = digits_spec({"optim.lr": [0.01, 0.1], "model.norm": ["none", "batch"]}, method="grid")
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "completed"
    assert sink.ended is not None and sink.ended[0] == "completed"
    assert set(sink.final_status().values()) == {"completed"}
    assert len(sink.final_status()) == 4
    for key, epochs in sink.epochs.items():
        assert sorted(epochs) == [1, 2, 3], key
    for key in sink.final_status():
        first = next(u for u in sink.updates if u.number == key)  # names the MLflow run
        lr, norm = first.params["optim.lr"], first.params["model.norm"]
        assert first.run_name.startswith("digits-sweep #") and f"lr={lr:.3g}" in first.run_name
        assert first.config["optim.lr"] == lr and first.config["model.norm"] == norm
        assert first.config["model.width"] == 32 and first.config["epochs"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_sweeps_run_their_trials(method, ray_session, tmp_path):
    params = {
        "optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.2},
        "model.norm": ["none", "layer"],
    }
    spec = digits_spec(params, method=method, max_trials=3, epochs=2)
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "completed"
    assert list(sink.final_status().values()) == ["completed"] * 3
    assert all(sorted(e) == [1, 2] for e in sink.epochs.values())
    assert sink.ended is not None and sink.ended[2] in sink.final_status()


@pytest.mark.slow
def test_an_invalid_combination_drawn_at_run_time_fails_only_its_trial(ray_session, tmp_path):
    # 2 x 1000 x 2 combinations of the model's settings: past the corner check (spec.
    # CORNER_LIMIT), so groups=3 (not dividing the width of 32) is found only when a trial
    # draws it.
    params = {
        "model.norm": "group",
        "model.groups": [3, 4],
        "model.dropout": [i / 4000 for i in range(1000)],
        "model.dropconnect": [False, True],
    }
    spec = digits_spec(params, method="random", max_trials=6, epochs=2, seed=3)
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "completed"
    by_groups: dict[int, set[str]] = {}
    for key, final in sink.final_status().items():
        groups = sink.last_update(key).params["model.groups"]
        by_groups.setdefault(groups, set()).add(final)
        if groups == 3:
            message = sink.last_update(key).message
            assert "invalid configuration" in message and "groups" in message, message
            assert sink.epochs.get(key, {}) == {}
            assert sink.last_update(key).attempt == 1  # failed at once, never retried
    assert by_groups == {3: {"failed"}, 4: {"completed"}}, by_groups


@pytest.mark.slow
def test_cancel_marks_running_trials_cancelled_and_runs_killed(ray_session, tmp_path):
    # Enough epochs that the sweep is still training when its cancel is polled (about 1/s):
    # a pack of small digits trials runs 30 epochs in well under a second.
    spec = digits_spec(
        {"optim.lr": [0.01, 0.02, 0.05, 0.1]}, method="grid", epochs=400, max_concurrent=2
    )
    sink = RecordingSink(cancel_after_epochs=2)
    _, status = sweep(spec, sink, tmp_path)
    ended = time.monotonic()

    assert status == "cancelled"
    assert sink.cancel_at is not None and ended - sink.cancel_at < 30
    assert sink.ended is not None and sink.ended[0] == "cancelled"
    statuses = sink.final_status()
    assert "cancelled" in statuses.values()
    assert set(statuses.values()) <= {"cancelled", "completed"}


def reported_epochs(path: Path) -> dict[int, list[int]]:
    """``trial number -> epochs`` in the order the driver process reported them."""
    out: dict[int, list[int]] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        number, epoch = line.split()
        out.setdefault(int(number), []).append(int(epoch))
    return out


def driver_request(spec: SweepSpec, tmp: Path, **extra: Any) -> dict[str, Any]:
    """What :mod:`tests.workers.driver.driver_process` runs: ``spec`` under a new sweep uid,
    storage, the epochs file and the sink's journal in ``tmp``, and ``extra``
    (``hang_at_end``)."""
    return {
        "spec": spec.model_dump(mode="json"),
        "sweep_uid": uuid.uuid4().hex[:8],
        "storage_path": str(tmp / "storage"),
        "epochs_file": str(tmp / "epochs.txt"),
        "journal": str(tmp / "journal.jsonl"),
        **extra,
    }


def kill_driver_when(
    address: str, request: dict, tmp: Path, condition: Callable[[], bool], what: str
) -> None:
    """Run the driver process for ``request`` and SIGKILL it once ``condition()`` holds; fail
    with ``what`` if it does not within 240 s, or with its log if the driver exits first."""
    driver = start_driver_process(address, request, tmp)
    try:
        deadline = time.monotonic() + 240
        while not condition():
            assert driver.poll() is None, (tmp / "driver.log").read_text()[-5000:]
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)


def start_driver_process(address: str, request: dict, tmp: Path) -> subprocess.Popen[bytes]:
    request_file = tmp / "request.json"
    request_file.write_text(json.dumps(request))
    cmd = [sys.executable, "-m", "tests.workers.driver.driver_process", address, str(request_file)]
    with open(tmp / "driver.log", "wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def resume(spec: SweepSpec, request: dict[str, Any]) -> tuple[str, RecordingSink]:
    """Resume the killed driver's sweep from its storage and its sink's journal (what a
    database would hold); the final status and the sink."""
    sink = RecordingSink.replay(Path(request["journal"]))
    status = run_sweep(
        spec, sink, sweep_uid=request["sweep_uid"], storage_path=request["storage_path"],
        resume=True,
    )  # fmt: skip
    return status, sink


def journal_epochs(request: dict[str, Any]) -> dict[int, list[int]]:
    """Every epoch report in the journal of both drivers, per trial, in order."""
    out: dict[int, list[int]] = {}
    for line in Path(request["journal"]).read_text().splitlines():
        kind, data = json.loads(line)
        if kind == "epoch":
            out.setdefault(data["number"], []).append(data["epoch"])
    return out


@pytest.mark.slow
def test_sweep_resumed_after_its_trials_had_all_ended_is_completed(
    ray_cluster, ray_session, tmp_path
):
    """The driver dies after Tune finished and before the sweep ended: the restored experiment
    runs no step, and its ended trials still count."""
    spec = digits_spec({"optim.lr": [0.05, 0.1]}, method="grid", epochs=2)
    request = driver_request(spec, tmp_path, hang_at_end=True)
    at_end = Path(request["epochs_file"]).with_suffix(".ended").exists
    kill_driver_when(ray_cluster.address, request, tmp_path, at_end, "the driver never hung")
    before = journal_epochs(request)

    status, sink = resume(spec, request)

    assert status == "completed", sink.ended
    assert sink.final_status() == {1: "completed", 2: "completed"}
    assert journal_epochs(request) == before  # nothing trained again
    assert sink.ended is not None and sink.ended[2] in (1, 2)  # the best trial


@pytest.mark.slow
def test_trials_read_data_sets_from_the_deployments_directory_only(ray_session, tmp_path):
    from tests.toolbox.test_data import _write_mnist

    _write_mnist(tmp_path / "data", "MNIST", n=120, seed=0)
    spec = digits_spec({"optim.lr": [0.05]}, method="grid", epochs=1, dataset="mnist")

    def run(data_dir: Path) -> tuple[str, RecordingSink]:
        sink = RecordingSink()
        status = run_sweep(
            spec,
            sink,
            sweep_uid=uuid.uuid4().hex[:8],
            storage_path=str(tmp_path / "tune"),
            data_dir=str(data_dir),
            data_download=False,
        )
        return status, sink

    status, sink = run(tmp_path / "data")
    assert status == "completed", sink.ended
    assert set(sink.final_status().values()) == {"completed"}

    status, sink = run(tmp_path / "empty")  # nothing there, and no download allowed
    assert status == "failed", sink.ended
    (key,) = sink.final_status()
    message = sink.last_update(key).message
    assert str(tmp_path / "empty") in message and "MNIST" in message, message


@pytest.mark.slow
def test_a_sweep_an_earlier_driver_started_fails_on_resume_saying_why(
    ray_cluster, ray_session, tmp_path
):
    spec = digits_spec({"optim.lr": [0.05, 0.1]}, method="grid", epochs=2)
    request = driver_request(spec, tmp_path, hang_at_end=True)
    at_end = Path(request["epochs_file"]).with_suffix(".ended").exists
    kill_driver_when(ray_cluster.address, request, tmp_path, at_end, "the driver never hung")
    experiment = Path(request["storage_path"], experiment_name(request["sweep_uid"]))
    (experiment / FORMAT_FILE).unlink()  # as an earlier driver left its experiments
    left = sorted(p.relative_to(experiment) for p in experiment.rglob("*"))

    status, sink = resume(spec, request)

    assert status == "failed"
    assert sink.ended is not None and "earlier version of the driver" in sink.ended[1]
    assert sink.final_status() == {1: "completed", 2: "completed"}  # ended trials keep theirs
    assert sorted(p.relative_to(experiment) for p in experiment.rglob("*")) == left
