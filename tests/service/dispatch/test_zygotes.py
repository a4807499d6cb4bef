"""Sweeps fork their drivers and trial workers from the zygotes, and each sweep still fails
alone: against the session's real Ray cluster and MLflow server, with a real SQLite file."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from tests.service.helpers import make_settings, strict_json, wait_for
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES
from workers.jobs import RayJobs

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Settings:
    settings = make_settings(tmp_path, ray_cluster, mlflow_server)
    assert settings.driver_zygote_socket is not None  # the default, where the path fits
    assert settings.worker_zygote_socket is not None
    return settings


def ours(settings: Settings) -> list[tuple[int, int, list[bytes]]]:
    """(pid, parent pid, command line) of every process of this test's database."""
    marker = f"SWEEPS_DATABASE_URL_FILE={settings.database_url_file}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes():
                continue
            args = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(entry.name), ppid, args))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def driver_of(settings: Settings, sweep_id: int) -> tuple[int, int]:
    """(pid, parent pid) of the process named ``python -m service.job <sweep_id>``."""
    for pid, ppid, args in ours(settings):
        if args[-3:] == [b"-m", b"service.job", str(sweep_id).encode()]:
            return pid, ppid
    raise AssertionError(f"no driver for sweep {sweep_id}")


def trial_workers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """(command line, parent's command line) of the Ray workers of this test's sweep jobs.
    Excepted: the jobs' supervisors (``ray::JobSupervisor``, or while it starts
    ``ray::_ray_internal_job_actor_<job>:JobSupervisor.__init__``) and the raylet's idle
    pool workers (``ray::IDLE``, started by the raylet, never by a zygote)."""
    return [
        (cmdline(pid), cmdline(ppid))
        for pid, ppid, args in ours(settings)
        if args[0].startswith(b"ray::")
        and b"JobSupervisor" not in args[0]
        and not args[0].startswith(b"ray::IDLE")
    ]


def test_drivers_and_trial_workers_are_forked_and_a_killed_driver_takes_only_its_sweep(
    settings: Settings, ray_cluster: Any
) -> None:
    headers = {"Authorization": "Bearer never-sent-to-jobs"}
    jobs = RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)
    with TestClient(create_app(settings), headers=headers) as client:
        sockets = (settings.driver_zygote_socket, settings.worker_zygote_socket)
        wait_for(lambda: None, lambda _: all(p and p.exists() for p in sockets), 180, "zygotes")
        body = digits_body({"optim.lr": [0.05]}, epochs=300, max_concurrent=1)
        first, second = (client.post("/sweeps", json=body).json()["id"] for _ in range(2))
        get = lambda i: strict_json(client.get(f"/sweeps/{i}").text)  # noqa: E731

        driver, parent = wait_for(lambda: _try(driver_of, settings, first), bool, 120, "driver")
        assert b"service.job.zygote" in cmdline(parent)  # forked, not started
        # A launcher that cannot reach the zygote starts its worker cold (seen once under
        # heavy load, cause not found): at least one worker must be a fork.
        forked = lambda seen: any(b"workers.warm.trials" in parent for _, parent in seen)  # noqa: E731
        wait_for(lambda: trial_workers(settings), forked, 120, "a forked trial worker")

        os.kill(driver, signal.SIGKILL)  # a driver crashes: its sweep is resumed, alone
        ended = [
            wait_for(lambda i=i: get(i), lambda s: s["status"] in FINAL_SWEEP_STATUSES, 400, "end")
            for i in (first, second)
        ]
    assert [s["status"] for s in ended] == ["completed", "completed"], ended
    assert [s["resumes"] for s in ended] == [1, 0]
    # The resumed sweep's new job has its own log, written by its (forked) driver.
    assert "job start-up" in jobs.logs(ended[0]["ray_job_id"])


def _try(find: Any, *args: Any) -> Any:
    try:
        return find(*args)
    except AssertionError:
        return None
