"""Crash safety: the API restarts mid-sweep, a sweep's job vanishes, a driver ignores a cancel.

The API runs as a real uvicorn process where the test kills it; otherwise in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import main as cli
from service.config import Settings
from tests.conftest import free_port
from tests.service.helpers import (
    Api,
    make_settings,
    mlflow_runs,
    strict_json,
    wait_for,
    wait_tracked,
)
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES
from workers.jobs import RayJobs

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Settings:
    port = free_port()
    return make_settings(
        tmp_path,
        ray_cluster,
        mlflow_server,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        warm_drivers=1,  # the restarted API adopts the standby the killed one started
    )


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[Api]:
    server = Api(settings, tmp_path / "api.log")
    server.start()
    yield server
    server.stop()


def curves(get: Any, sweep_id: int) -> dict[int, list[int]]:
    trials = get(f"/sweeps/{sweep_id}/trials")["data"]
    details = [get(f"/sweeps/{sweep_id}/trials/{t['number']}") for t in trials]
    return {d["number"]: [p["epoch"] for p in d["curve"]] for d in details}


def any_epoch(get: Any, sweep_id: int) -> Any:
    return wait_for(lambda: curves(get, sweep_id), lambda c: any(c.values()), 240, "a first epoch")


def test_restarting_the_api_mid_sweep_loses_nothing(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    body = digits_body({"optim.lr": [0.02, 0.05, 0.1, 0.2]}, method="grid", epochs=5)
    created = api.http.post("/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    any_epoch(api.get, sweep_id)

    api.kill()  # SIGKILL: no shutdown hook runs
    api.start()

    final = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
    sweep = wait_for(lambda: api.get(f"/sweeps/{sweep_id}"), final, 420, "the sweep's end")
    assert sweep["status"] == "completed", sweep
    assert sweep["resumes"] == 0  # the job kept running while the API was down
    assert curves(api.get, sweep_id) == {n: [1, 2, 3, 4, 5] for n in (1, 2, 3, 4)}

    token = api.http.headers["Authorization"].removeprefix("Bearer ")
    flags = ["--url", api.settings.api_url, "--token", token]
    capsys.readouterr()
    assert cli.main([*flags, "status", str(sweep_id)]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "best trial #" in out and "optim.lr=" in out
    assert cli.main([*flags, "list", "--status", "completed"]) == 0
    assert "1 of 1" in capsys.readouterr().out
    assert cli.main([*flags, "--token", "wrong", "list"]) == 1


def test_a_sweep_whose_job_vanished_is_resumed_from_tune_state(
    settings: Settings, ray_cluster: Any, mlflow_server: Any
) -> None:
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        get = lambda path: strict_json(client.get(path).text)  # noqa: E731
        # Enough epochs that the stop below lands while both trials still train: the first
        # epoch reaches the database a quarter second late (the driver's writes gather), and
        # twenty epochs of a tiny MLP on digits can all finish in that time.
        epochs = 100
        body = digits_body(
            {"optim.lr": [0.02, 0.1]}, method="grid", epochs=epochs, max_concurrent=2
        )
        sweep_id = client.post("/sweeps", json=body).json()["id"]
        any_epoch(get, sweep_id)
        job_id = get(f"/sweeps/{sweep_id}")["ray_job_id"]
        jobs = RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)
        assert jobs.stop(job_id)  # the driver dies as if its node went away

        final = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
        sweep = wait_for(lambda: get(f"/sweeps/{sweep_id}"), final, 420, "the sweep's end")
        assert sweep["status"] == "completed", sweep
        assert sweep["resumes"] == 1 and sweep["ray_job_id"] != job_id
        assert curves(get, sweep_id) == {n: list(range(1, epochs + 1)) for n in (1, 2)}
        wait_tracked(get, sweep_id)
        trials = get(f"/sweeps/{sweep_id}/trials")["data"]
    # The resumed driver restores Tune's state: every trial finishes from its checkpoint.
    assert [t["status"] for t in trials] == ["completed", "completed"]
    _, parents, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    run_status = {c.info.run_id: c.info.status for c in children}
    assert run_status == {t["mlflow_run_id"]: "FINISHED" for t in trials}


def test_a_cancel_the_driver_does_not_finish_in_time_is_completed_by_the_api(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    settings = make_settings(tmp_path, ray_cluster, mlflow_server, cancel_grace_seconds=0.1)
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        get = lambda path: strict_json(client.get(path).text)  # noqa: E731
        body = digits_body({"optim.lr": [0.02, 0.1]}, method="grid", epochs=200)
        sweep_id = client.post("/sweeps", json=body).json()["id"]
        any_epoch(get, sweep_id)
        assert client.post(f"/sweeps/{sweep_id}/cancel").status_code == 200
        final = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
        sweep = wait_for(lambda: get(f"/sweeps/{sweep_id}"), final, 30, "the cancel")
        assert sweep["status"] == "cancelled"
        trials = get(f"/sweeps/{sweep_id}/trials")["data"]
        assert {t["status"] for t in trials} == {"cancelled"}
        job = RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)
        wait_for(lambda: job.status(sweep["ray_job_id"]), lambda s: s != "running", 30, "stop")
        wait_tracked(get, sweep_id)
    _, parents, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    assert {r.info.status for r in [*parents, *children]} == {"KILLED"}
