"""F3, F4, F11: MLflow stops, is down from the start, or hangs; training never waits for it, and
once it answers again it holds everything the database does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.components import BlackHole, PrivateMlflow
from tests.faults.service import (
    assert_curves_complete,
    assert_mlflow_matches,
    in_process,
    long_body,
)
from tests.service.helpers import make_settings, wait_for
from tests.specs import digits_body

pytestmark = pytest.mark.slow
OUTAGE_S = 60.0


def test_f3_mlflow_stopped_for_a_minute_mid_sweep_ends_identical_to_the_database(
    tmp_path: Path, ray_cluster: Any, private_mlflow: PrivateMlflow
) -> None:
    private_mlflow.start()
    epochs = 120
    settings = make_settings(tmp_path, ray_cluster, private_mlflow, tracking_backoff_seconds=5)
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(epochs, [0.02, 0.05], max_concurrent=1))
        api.wait_epochs(sweep_id, 5)
        private_mlflow.stop()
        down_at, epochs_then = time.monotonic(), api.epochs(sweep_id)
        api.wait_epochs(sweep_id, epochs_then + 20, timeout=OUTAGE_S)  # training goes on
        told = lambda s: s["mlflow_pending"] > 0 and "MLflow at" in s["mlflow_error"]  # noqa: E731
        wait_for(lambda: api.sweep(sweep_id), told, 30, "the outage shown on the sweep")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        private_mlflow.start()
        sweep = api.wait_final(sweep_id, timeout=600)
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert sweep["status"] == "completed" and sweep["trial_counts"]["failed"] == 0
    assert sweep["mlflow_error"] == ""
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(private_mlflow.uri, sweep, trials)


def test_f4_mlflow_down_from_the_start_gets_every_run_once_it_is_back(
    tmp_path: Path, ray_cluster: Any, private_mlflow: PrivateMlflow
) -> None:
    epochs = 3
    settings = make_settings(tmp_path, ray_cluster, private_mlflow, tracking_backoff_seconds=2)
    body = digits_body({"optim.lr": [0.02, 0.05, 0.1]}, method="grid", epochs=epochs)
    with in_process(settings) as api:
        sweep_id = api.submit(body)
        sweep = api.wait_final(sweep_id, timeout=300)
        assert sweep["status"] == "completed" and sweep["mlflow_pending"] > 0
        assert sweep["links"]["mlflow_experiment"] is None  # nothing reached MLflow yet
        private_mlflow.start()
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert sweep["links"]["mlflow_experiment"].startswith(private_mlflow.uri)
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(private_mlflow.uri, sweep, trials)


def test_f11_a_hung_mlflow_never_holds_up_a_submission_or_readiness(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    hole = BlackHole()
    hung = make_settings(tmp_path, ray_cluster, hole)  # accepts, never answers
    body = digits_body({"optim.lr": [0.05, 0.1]}, method="grid", epochs=2)
    try:
        with in_process(hung) as api:
            started = time.monotonic()
            r = api.client.post("/sweeps", json=body)
            assert r.status_code == 201 and time.monotonic() - started < 3
            started = time.monotonic()
            ready = api.client.get("/readyz")
            assert time.monotonic() - started < 3
            assert ready.status_code == 503
            checks = ready.json()["checks"]
            assert checks["database"] == "ok"
            assert "timed out" in checks["mlflow"] or checks["mlflow"].startswith("no answer")
            sweep_id = r.json()["id"]
            sweep = api.wait_final(sweep_id, timeout=300)  # trains without MLflow
            assert sweep["status"] == "completed" and sweep["mlflow_pending"] > 0
    finally:
        hole.close()
    # The same database behind an API whose MLflow answers: it all arrives.
    with in_process(make_settings(tmp_path, ray_cluster, mlflow_server)) as api:
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert_curves_complete(trials, 2)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)
