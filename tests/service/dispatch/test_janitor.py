"""A deployment's Ray job table stays bounded: a sweep's jobs are deleted once it is final and
in MLflow (its driver log's tail kept with it), standbys' and zygotes' once they end; on a real
Ray cluster, MLflow server and database."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from service.dispatch.standby import JOB_PREFIX
from tests.faults.service import in_process
from tests.faults.test_ray import driver_pid, eventually_pid
from tests.service.helpers import make_settings, wait_for
from tests.specs import digits_body
from workers.jobs import RayJobs

pytestmark = pytest.mark.slow


def test_a_done_sweeps_jobs_are_deleted_with_its_log_kept_and_an_ended_standbys_too(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    settings = make_settings(tmp_path, ray_cluster, mlflow_server, warm_drivers=1)
    jobs = RayJobs(ray_cluster.dashboard_url, ray_cluster.token)
    with in_process(settings) as api:
        sweep_id = api.submit(digits_body({"optim.lr": [0.05, 0.1]}, method="grid"))
        api.wait_final(sweep_id, timeout=300)
        sweep = api.wait_tracked(sweep_id)
        job = sweep["ray_job_id"]
        wait_for(lambda: jobs.status(job), lambda s: s == "missing", 60, "the sweep's job gone")
        log = api.client.get(f"/sweeps/{sweep_id}/log")
        assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain")
        assert f"sweep {sweep_id} ended completed" in log.text, log.text[-2000:]

        pid = eventually_pid(lambda: driver_pid("--standby", settings.database_url_file))
        standby = next(
            a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if a.startswith(JOB_PREFIX)
        )  # fmt: skip
        assert jobs.status(standby) in {"pending", "running"}
        os.kill(pid, signal.SIGKILL)
        gone = lambda s: s == "missing"  # noqa: E731
        wait_for(lambda: jobs.status(standby), gone, 60, "the dead standby's job gone")
        both_gone = lambda ids: standby not in ids and job not in ids  # noqa: E731
        wait_for(jobs.job_ids, both_gone, 60, "both jobs gone from Ray's job table")
