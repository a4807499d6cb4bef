"""Warm standby drivers: a sweep is handed to a pre-started job, which is then replaced.

Against the session's real Ray cluster and MLflow server, with a real SQLite file. Most tests
start standbys cold (no zygotes: the pool's rules without them); the last one forks them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import store
from service.api.app import create_app
from service.config import Settings
from service.dispatch.dispatcher import Dispatcher
from service.dispatch.standby import JOB_PREFIX
from service.store.db import init_db, make_engine, make_session_factory, session_scope
from tests.service.helpers import make_settings, strict_json, wait_for
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES
from workers.jobs import RayJobs

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Settings:
    return make_settings(tmp_path, ray_cluster, mlflow_server, warm_drivers=1, driver_zygote=False)


@pytest.fixture
def jobs(ray_cluster: Any) -> RayJobs:
    return RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)


def headers(settings: Settings) -> dict[str, str]:
    assert settings.api_token is not None
    return {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}


def standby_rows(settings: Settings) -> list[tuple[str, Any, Any]]:
    factory = make_session_factory(make_engine(settings.database_url))
    with session_scope(factory) as session:
        return [(d.job_id, d.created_at, d.ready_at) for d in store.standbys(session)]


def one_ready(client: TestClient, other_than: str | None = None) -> str:
    """Wait until exactly one standby is ready (and is not ``other_than``); its job id."""

    def warm(_: Any) -> bool:
        body = strict_json(client.get("/readyz").text)
        return bool(body["warm_drivers"] == {"ready": 1, "starting": 0, "wanted": 1})

    wait_for(lambda: None, warm, 180, "a ready standby driver")
    rows = standby_rows(client.app.state.settings)  # type: ignore[attr-defined]
    assert len(rows) == 1 and rows[0][0] != other_than, rows
    return rows[0][0]


def test_a_sweep_is_handed_to_the_ready_standby_which_is_replaced_once_it_ends(
    settings: Settings, jobs: RayJobs
) -> None:
    with TestClient(create_app(settings), headers=headers(settings)) as client:
        standby = one_ready(client)
        assert standby.startswith(JOB_PREFIX) and jobs.status(standby) == "running"

        body = digits_body({"optim.lr": [0.05, 0.1]}, method="grid", epochs=2)
        sweep_id = client.post("/sweeps", json=body).json()["id"]
        get = lambda: strict_json(client.get(f"/sweeps/{sweep_id}").text)  # noqa: E731
        sweep = wait_for(get, lambda s: s["status"] in FINAL_SWEEP_STATUSES, 300, "the sweep's end")

        assert sweep["status"] == "completed", sweep
        assert sweep["ray_job_id"] == standby and sweep["resumes"] == 0
        # It exits; the janitor may already have deleted its ended job.
        ended = {"succeeded", "missing"}
        wait_for(lambda: jobs.status(standby), lambda s: s in ended, 60, "its exit")
        replacement = one_ready(client, other_than=standby)
        # Warming up never competes with trials: the replacement started after the sweep.
        (row,) = standby_rows(settings)
        assert row[0] == replacement and row[1] >= datetime.fromisoformat(sweep["ended_at"])
    # A graceful shutdown retires the standby: row gone, job stopped.
    assert standby_rows(settings) == []
    wait_for(lambda: jobs.status(replacement), lambda s: s in {"stopped", "succeeded"}, 60, "stop")


def test_a_sweep_submitted_while_the_standby_starts_is_driven_by_it(settings: Settings) -> None:
    with TestClient(create_app(settings), headers=headers(settings)) as client:
        rows = wait_for(lambda: standby_rows(settings), bool, 60, "a standby to be started")
        (starting, _, ready_at) = rows[0]
        assert ready_at is None  # it warms up for seconds; the sweep arrives meanwhile
        body = digits_body({"optim.lr": [0.1]}, epochs=2)
        sweep_id = client.post("/sweeps", json=body).json()["id"]
        get = lambda: strict_json(client.get(f"/sweeps/{sweep_id}").text)  # noqa: E731
        sweep = wait_for(get, lambda s: s["status"] in FINAL_SWEEP_STATUSES, 300, "the sweep's end")
    assert sweep["status"] == "completed" and sweep["resumes"] == 0, sweep
    assert sweep["ray_job_id"] == starting


def test_a_dead_standby_is_dropped_and_replaced_and_never_handed_a_sweep(
    settings: Settings, jobs: RayJobs
) -> None:
    with TestClient(create_app(settings), headers=headers(settings)) as client:
        first = one_ready(client)
        assert jobs.stop(first)
        # Stopped; the janitor may already have deleted its ended job.
        stopped = {"stopped", "missing"}
        wait_for(lambda: jobs.status(first), lambda s: s in stopped, 60, "the stop")
        # A sweep submitted at once skips the dead standby: it gets a job of its own.
        body = digits_body({"optim.lr": [0.1]}, epochs=1)
        sweep_id = client.post("/sweeps", json=body).json()["id"]
        get = lambda: strict_json(client.get(f"/sweeps/{sweep_id}").text)  # noqa: E731
        sweep = wait_for(get, lambda s: s["status"] in FINAL_SWEEP_STATUSES, 300, "the sweep's end")
        assert sweep["status"] == "completed" and sweep["ray_job_id"] != first, sweep
        one_ready(client, other_than=first)


def test_a_restarted_api_adopts_the_standbys_and_a_standby_without_its_row_retires(
    settings: Settings, jobs: RayJobs
) -> None:
    engine = make_engine(settings.database_url)
    init_db(engine)
    factory = make_session_factory(engine)
    before = Dispatcher(settings, factory, jobs)
    before.keep_warm()
    (job_id, _, _) = standby_rows(settings)[0]

    after = Dispatcher(settings, factory, jobs)  # a new API process on the same database
    after.keep_warm(check_jobs=True)
    assert [r[0] for r in standby_rows(settings)] == [job_id]  # adopted, none added
    wait_for(lambda: standby_rows(settings)[0][2], bool, 180, "the standby to be ready")

    with session_scope(factory) as session:
        store.remove_standby(session, job_id)  # retired without a stop: it exits by itself
    wait_for(lambda: jobs.status(job_id), lambda s: s == "succeeded", 60, "the standby's exit")
    engine.dispose()


def test_with_zygotes_a_claimed_standby_is_replaced_while_its_sweep_runs(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any, jobs: RayJobs
) -> None:
    settings = make_settings(tmp_path, ray_cluster, mlflow_server, warm_drivers=1)
    assert settings.driver_zygote_socket is not None
    with TestClient(create_app(settings), headers=headers(settings)) as client:
        socket = settings.driver_zygote_socket
        wait_for(lambda: None, lambda _: socket.exists(), 180, "the driver zygote")
        standby = one_ready(client)
        body = digits_body({"optim.lr": [0.05]}, epochs=200, max_concurrent=1)
        sweep_id = client.post("/sweeps", json=body).json()["id"]
        get = lambda: strict_json(client.get(f"/sweeps/{sweep_id}").text)  # noqa: E731
        # A standby costs a fork: the pool is topped up at once, not once the sweep ends.
        replacement = one_ready(client, other_than=standby)
        assert get()["status"] not in FINAL_SWEEP_STATUSES
        sweep = wait_for(get, lambda s: s["status"] in FINAL_SWEEP_STATUSES, 300, "the sweep's end")
        assert sweep["status"] == "completed" and sweep["ray_job_id"] == standby, sweep
        assert [r[0] for r in standby_rows(settings)] == [replacement]
        assert "standby" in jobs.logs(standby) and "drives sweep" in jobs.logs(standby)
