"""Helpers of the service tests: settings for the real test cluster, waiting, strict JSON, and
an API process to kill and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from service.cli.stack import settings_env
from service.config import Settings


def make_settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any, **kw: Any) -> Settings:
    """Settings pointing at the session's Ray cluster and MLflow server, state in ``tmp_path``."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/sweeps.db",
        "database_url_file": tmp_path / "secrets" / "database-url",
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


def wait_tracked(get: Callable[[str], Any], sweep_id: int, timeout: float = 60) -> Any:
    """The sweep (``get`` answers API paths) once MLflow has all of it: the tracking sender
    delivers in the background of a running API."""
    path = f"/sweeps/{sweep_id}"
    return wait_for(lambda: get(path), lambda s: s["mlflow_pending"] == 0, timeout, "MLflow")


class Api:
    """A uvicorn process serving the app for ``settings``; killed and restarted at will."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        self.proc: subprocess.Popen[bytes] | None = None
        token = settings.api_token.get_secret_value() if settings.api_token else None
        auth = {"Authorization": f"Bearer {token}"} if token else {}  # "Bearer " is no header
        self.http = httpx.Client(base_url=settings.api_url, headers=auth, timeout=30)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app",
               "--host", "127.0.0.1", "--port", str(self.settings.port)]  # fmt: skip
        env = {**os.environ, **settings_env(self.settings)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self._healthy, bool, 90, f"the API to start (log: {self.log})")

    def _healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM: uvicorn's graceful shutdown, which retires the standby drivers."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        assert r.status_code == 200, r.text
        return strict_json(r.text)
