"""Shared session fixtures: a real local Ray cluster and a real MLflow server.

Fixture names are stable; tests of every package use them.

``ray_cluster`` -> :class:`RayCluster`
    A Ray head started once per session with ``ray start --head --block`` from the venv, on free
    ports (never 6379), 4 CPUs, its own ``--temp-dir`` and its own token (token
    authentication, as ``ray start`` turns on in Ray 2.60). Attributes: ``address`` (GCS
    ``host:port``, for ``ray.init(address=...)``), ``dashboard_url`` (Jobs API), ``token`` (send as
    ``Authorization: Bearer <token>``), ``temp_dir``. The session's environment gets
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` so an in-process ``ray.init`` connects.
    Stopped at the end by killing its own process group (never ``ray stop``: other people's
    clusters run on the same machine). Job processes run with the cluster's environment, so
    entrypoints should call ``sys.executable``, not ``python``.

``mlflow_server`` -> :class:`MlflowServer`
    ``mlflow server`` on SQLite and a local artifact root on a free port, healthy before the
    first test. Attribute: ``uri``. Its process group is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.cli.stack import (
    MLFLOW_ENV,
    RAY_NODE_ENV,
    free_port,
    kill_environ_naming,
    kill_group,
    mlflow_server_command,
    ray_head_command,
    wait_http,
)

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class RayCluster:
    """A running local Ray head (see the module docstring)."""

    address: str
    dashboard_url: str
    token: str
    temp_dir: str


@dataclass(frozen=True)
class MlflowServer:
    """A running MLflow tracking server."""

    uri: str


def _kill_processes_mentioning(marker: str) -> None:
    """SIGKILL our own leftover processes whose command line contains ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(OSError):  # gone already
                os.kill(int(entry.name), signal.SIGKILL)


def _refresh_ray_auth() -> None:
    """Make this process re-read RAY_AUTH_* (Ray reads them once, when first imported)."""
    if "ray" in sys.modules:
        from ray._private.authentication_test_utils import reset_auth_token_state

        reset_auth_token_state()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real local Ray head for the whole session (see the module docstring)."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    token = secrets.token_hex(32)
    token_file = Path(temp_dir, "auth_token")
    token_file.write_text(token)
    port, dash_port = free_port(), free_port()
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    path = f"{BIN}:{os.environ.get('PATH', '')}"
    # Without ray_head_env(): this process's ray.init would need Ray's single-machine mode set
    # before Ray is first imported (see service.cli.stack.RAY_LOOPBACK_ENV).
    env = {**os.environ, **RAY_NODE_ENV, **auth_env, "PATH": path}
    cmd = ray_head_command(port=port, dashboard_port=dash_port, temp_dir=Path(temp_dir), num_cpus=4)
    log = open(Path(temp_dir, "ray-start.log"), "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    mp = pytest.MonkeyPatch()
    try:
        for key, value in auth_env.items():
            mp.setenv(key, value)
        _refresh_ray_auth()
        dashboard_url = f"http://127.0.0.1:{dash_port}"
        wait_http(f"{dashboard_url}/api/version", proc, timeout=90, what="ray start")
        yield RayCluster(f"127.0.0.1:{port}", dashboard_url, token, temp_dir)
    finally:
        mp.undo()
        _refresh_ray_auth()
        kill_group(proc)
        _kill_processes_mentioning(temp_dir)
        # Job drivers and workers run in sessions of their own; their environment names the
        # cluster's token file (a driver left behind would hold a CPU for the rest of the run).
        kill_environ_naming(f"RAY_AUTH_TOKEN_PATH={token_file}")
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server for the whole session."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = mlflow_server_command(root, port)
    env = {**os.environ, **MLFLOW_ENV}
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc, timeout=60, what="mlflow server")
        yield MlflowServer(uri)
    finally:
        kill_group(proc)
        log.close()


@pytest.fixture(scope="session", autouse=True)
def _private_database_url_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Settings built without ``database_url_file`` write the session's own file, never the
    checkout's ``.sweeps/secrets`` (where a developer's stack keeps its own)."""
    path = tmp_path_factory.mktemp("secrets") / "database-url"
    saved = os.environ.get("SWEEPS_DATABASE_URL_FILE")
    os.environ["SWEEPS_DATABASE_URL_FILE"] = str(path)
    yield
    if saved is None:
        os.environ.pop("SWEEPS_DATABASE_URL_FILE", None)
    else:
        os.environ["SWEEPS_DATABASE_URL_FILE"] = saved


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with the session's status once pytest is done, skipping the interpreter's teardown:
    threads that Ray, gRPC and torch leave behind can crash it (a SIGSEGV after the summary was
    seen in CI), which would turn a run's verdict into a signal."""
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
