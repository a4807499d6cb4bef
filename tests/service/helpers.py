"""Helpers of the service tests: settings for the real test cluster, specs, waiting, strict JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from service.config import Settings


def make_settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any, **kw: Any) -> Settings:
    """Settings pointing at the session's Ray cluster and MLflow server, state in ``tmp_path``."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/sweeps.db",
        "ray_address": ray_cluster.address,
        "ray_dashboard_url": ray_cluster.dashboard_url,
        "ray_auth_token": ray_cluster.token,
        "mlflow_tracking_uri": mlflow_server.uri,
        "storage_path": str(tmp_path / "tune"),
        "public_url": "http://testserver",
        "job_python": sys.executable,
        "monitor_interval_seconds": 0.5,
        "api_token": "never-sent-to-jobs",
        # Most tests need no pre-started sweep job; those about them (test_standby, the
        # end-to-end and restart tests) ask for one.
        "warm_drivers": 0,
    }
    return Settings(**(values | kw))


def strict_json(text: str) -> Any:
    """Parse JSON, failing on NaN or Infinity (which Python's json would accept)."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {token} in a response")

    return json.loads(text, parse_constant=refuse)


def wait_for(
    fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Poll ``fetch`` until ``done`` holds for its value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {value}")
        time.sleep(0.5)
        value = fetch()
    return value


def mlflow_runs(uri: str, uid: str) -> tuple[MlflowClient, list[Any], list[Any]]:
    """The sweep's parent runs and child runs, found by tag in every experiment."""
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`sweeps.sweep_uid` = '{uid}'", ViewType.ALL)
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    return client, parents, children
