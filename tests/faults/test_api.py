"""F9, F10: the API is killed and restarted around a running sweep; cancels race a sweep's start
and its end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from service.cli.stack import free_port
from tests.faults.service import (
    Service,
    assert_curves_complete,
    assert_mlflow_matches,
    in_process,
    long_body,
)
from tests.service.helpers import Api, make_settings, mlflow_runs
from tests.specs import digits_body

pytestmark = pytest.mark.slow


def test_f9_an_api_killed_and_restarted_after_0_20_and_60_s_loses_nothing(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path, ray_cluster, mlflow_server, port=port, public_url=f"http://127.0.0.1:{port}"
    )
    api = Api(settings, tmp_path / "api.log")
    api.start()
    service = Service(api.http)
    try:
        epochs = 300
        sweep_id = service.submit(long_body(epochs, [0.02, 0.05], max_concurrent=1))
        service.wait_epochs(sweep_id, 5)
        progress = []
        for down_s in (0, 20, 60):
            api.kill()  # SIGKILL: no shutdown hook runs
            time.sleep(down_s)
            api.start()
            progress.append(service.epochs(sweep_id))
        assert progress == sorted(progress) and progress[-1] > progress[0]  # trained meanwhile
        sweep = service.wait_final(sweep_id, timeout=600)
        sweep = service.wait_tracked(sweep_id)
        trials = service.trials(sweep_id)
        assert sweep["status"] == "completed" and sweep["resumes"] == 0, sweep
        assert_curves_complete(trials, epochs)
        assert_mlflow_matches(mlflow_server.uri, sweep, trials)

        api.kill()  # and a cancel sent to the restarted API ends a sweep within 30 s
        api.start()
        other = service.submit(long_body(epochs, [0.02, 0.05], max_concurrent=1))
        service.wait_epochs(other, 5)
        asked = time.monotonic()
        assert api.http.post(f"/sweeps/{other}/cancel").status_code == 200
        cancelled = service.wait_final(other, timeout=30)
        assert cancelled["status"] == "cancelled" and time.monotonic() - asked < 30
        cancelled = service.wait_tracked(other)
        assert_mlflow_matches(mlflow_server.uri, cancelled, service.trials(other))
    finally:
        api.stop()


def test_f10_cancels_racing_a_sweeps_start_and_its_end_follow_the_rules(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    settings = make_settings(
        tmp_path, ray_cluster, mlflow_server, warm_drivers=1, cancel_grace_seconds=2
    )
    body = digits_body({"optim.lr": [0.05, 0.1]}, method="grid", epochs=2)
    with in_process(settings) as api:
        # Cancelled as it starts: the cancel is never lost to the driver's start.
        early = api.submit(body)
        assert api.client.post(f"/sweeps/{early}/cancel").json()["status"] == "cancelling"
        sweep = api.wait_final(early, timeout=60)
        assert sweep["status"] == "cancelled", sweep
        sweep = api.wait_tracked(early)
        trials = api.trials(early)
        assert {t["status"] for t in trials} <= {"cancelled"}
        assert_mlflow_matches(mlflow_server.uri, sweep, trials)

        # Cancelled once it completed: refused, and the sweep stays completed with its best.
        late = api.submit(body)
        done = api.wait_final(late, timeout=300)
        assert done["status"] == "completed"
        refused = api.client.post(f"/sweeps/{late}/cancel")
        assert refused.status_code == 409 and "already ended" in refused.json()["detail"]
        time.sleep(settings.cancel_grace_seconds + 2 * settings.monitor_interval_seconds)
        after = api.wait_tracked(late)
        assert (after["status"], after["best_trial"]) == ("completed", done["best_trial"])
        _, parents, _ = mlflow_runs(mlflow_server.uri, after["uid"])
        assert parents[0].data.tags["sweeps.outcome"] == "completed"
        assert_mlflow_matches(mlflow_server.uri, after, api.trials(late))
