"""Secrets stay secret: a sweep on PostgreSQL with a password, run through the API process, and
the password is nowhere but where the service keeps it.

The local server trusts 127.0.0.1, so it accepts any password: the URL carries a fresh random
one, which must not reach Ray's Jobs API (job list, details, logs), any process's command line,
the environment of any Ray process (drivers and trial workers inherit their job's), or the logs.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.service.conftest import PgServer
from tests.service.helpers import Api, make_settings, wait_for
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def ray_process_environments(temp_dir: str) -> dict[int, str]:
    """pid -> environment of every process of the Ray cluster (its temp dir in the command line,
    or a descendant of one that has)."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir not in " ".join(proc.info["cmdline"] or []):
                continue
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = Path(f"/proc/{p.pid}/environ").read_bytes().decode(errors="replace")
        except (psutil.Error, OSError):
            continue
    return found


def test_the_database_password_appears_in_no_job_command_line_environment_or_log(
    tmp_path: Path,
    ray_cluster: Any,
    mlflow_server: Any,
    pg_server: PgServer,
    pg_database_factory: Callable[[], str],
) -> None:
    password = f"pw{secrets.token_hex(16)}"
    database = pg_database_factory().rsplit("/", 1)[1]
    url = (
        f"postgresql+psycopg://{pg_server.user}:{password}@{pg_server.host}:{pg_server.port}"
        f"/{database}"
    )
    port = free_port()
    settings = make_settings(
        tmp_path,
        ray_cluster,
        mlflow_server,
        database_url=url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        warm_drivers=1,  # a standby job too: its environment is checked as well
    )
    api = Api(settings, tmp_path / "api.log")
    api.start()
    try:
        body = digits_body({"optim.lr": [0.05, 0.1]}, method="grid", epochs=2)
        created = api.http.post("/sweeps", json=body)
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]
        environments = ray_process_environments(ray_cluster.temp_dir)  # while trials run
        final = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
        sweep = wait_for(lambda: api.get(f"/sweeps/{sweep_id}"), final, 300, "the sweep's end")
        assert sweep["status"] == "completed", sweep
        environments |= ray_process_environments(ray_cluster.temp_dir)

        ray = httpx.Client(
            base_url=ray_cluster.dashboard_url,
            headers={"Authorization": f"Bearer {ray_cluster.token}"},
            timeout=30,
        )
        jobs = ray.get("/api/jobs/")
        assert jobs.status_code == 200, jobs.text
        assert password not in jobs.text
        env_of = lambda job: (job.get("runtime_env") or {}).get("env_vars") or {}  # noqa: E731
        # The cluster is the test session's: this test's jobs are those on its storage path.
        storage = settings.storage_path
        ours = [j for j in jobs.json() if env_of(j).get("SWEEPS_STORAGE_PATH") == storage]
        assert len(ours) >= 2, jobs.text  # the sweep's job and the standby
        for job in ours:
            job_id = job["submission_id"]
            for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/logs"):
                answer = ray.get(path)
                assert answer.status_code == 200, answer.text
                assert password not in answer.text, path
            env_vars = env_of(job)
            assert "SWEEPS_DATABASE_URL" not in env_vars, env_vars  # the file's path only
            assert env_vars.get("SWEEPS_DATABASE_URL_FILE") == str(settings.database_url_file)

        command_lines = subprocess.run(
            ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True
        ).stdout
        assert password not in command_lines
        assert environments, "no process of the Ray cluster was found"
        leaked = [pid for pid, env in environments.items() if password in env]
        assert not leaked, f"the password is in the environment of Ray processes {leaked}"
        assert password not in (tmp_path / "api.log").read_text(errors="replace")

        secret_file = settings.database_url_file
        assert secret_file.read_text().strip() == url
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert secret_file.stat().st_uid == os.getuid()
    finally:
        api.stop()
