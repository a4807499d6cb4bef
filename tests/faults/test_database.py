"""F5: the database goes away for 20 s mid-sweep; the sweep waits for it and completes, and the
API answers 503 meanwhile, never 500."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.components import PrivatePostgres
from tests.faults.service import (
    assert_curves_complete,
    assert_mlflow_matches,
    in_process,
    long_body,
)
from tests.service.helpers import make_settings

pytestmark = pytest.mark.slow
OUTAGE_S = 20.0


def test_f5_a_database_down_for_20_s_fails_nothing_and_the_api_says_503(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any, private_postgres: PrivatePostgres
) -> None:
    epochs = 100
    settings = make_settings(
        tmp_path, ray_cluster, mlflow_server, database_url=private_postgres.url
    )
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(epochs, [0.02, 0.05], max_concurrent=2))
        api.wait_epochs(sweep_id, 5)
        private_postgres.stop()
        answers: set[int] = set()
        down_until = time.monotonic() + OUTAGE_S
        while time.monotonic() < down_until:
            for path in (f"/sweeps/{sweep_id}", "/sweeps", f"/sweeps/{sweep_id}/trials"):
                answers.add(api.client.get(path).status_code)
            assert api.client.get("/healthz").status_code == 200
            time.sleep(1.0)
        ready = api.client.get("/readyz")
        private_postgres.start()
        sweep = api.wait_final(sweep_id, timeout=600)
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert answers == {503}, answers
    assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
    assert sweep["status"] == "completed" and sweep["trial_counts"]["failed"] == 0, sweep
    assert sweep["resumes"] == 0  # the job waited for the database; it never gave up
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def test_the_api_starts_with_the_database_down_and_serves_once_it_is_up(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any, private_postgres: PrivatePostgres
) -> None:
    settings = make_settings(
        tmp_path, ray_cluster, mlflow_server, database_url=private_postgres.url
    )
    private_postgres.stop()
    with in_process(settings) as api:
        assert api.client.get("/healthz").status_code == 200
        assert api.client.get("/sweeps").status_code == 503
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("not ready")
        private_postgres.start()
        deadline = time.monotonic() + 30
        while api.client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, api.client.get("/readyz").json()
            time.sleep(0.5)
        assert api.get("/sweeps")["count"] == 0
