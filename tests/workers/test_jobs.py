"""The Jobs API wrapper against a real, token-authenticated Ray head."""

from __future__ import annotations

import shlex
import socket
import sys
import time
import uuid

import pytest

from workers.errors import RayJobsError
from workers.jobs import JobState, RayJobs


def wait_for(jobs: RayJobs, job_id: str, states: set[str], timeout: float = 60) -> JobState:
    deadline = time.monotonic() + timeout
    state = jobs.status(job_id)
    while state not in states and time.monotonic() < deadline:
        time.sleep(0.5)
        state = jobs.status(job_id)
    return state


def python(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


def test_job_runs_with_token_and_env_and_reports_success(ray_cluster) -> None:
    jobs = RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)
    job_id = f"test-{uuid.uuid4().hex[:8]}"
    code = "import os; print('greeting=' + os.environ['GREETING'])"
    assert jobs.submit(python(code), job_id, {"GREETING": "hello"}) == job_id
    assert wait_for(jobs, job_id, {"succeeded", "failed"}) == "succeeded"
    assert "greeting=hello" in jobs.logs(job_id)


def test_stop_ends_a_running_job(ray_cluster) -> None:
    jobs = RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)
    job_id = f"test-{uuid.uuid4().hex[:8]}"
    jobs.submit(python("import time; print('up', flush=True); time.sleep(600)"), job_id, {})
    assert wait_for(jobs, job_id, {"running"}) == "running"
    assert jobs.stop(job_id) is True
    assert wait_for(jobs, job_id, {"stopped", "failed"}) == "stopped"


def test_unknown_job_is_missing(ray_cluster) -> None:
    jobs = RayJobs(ray_cluster.dashboard_url, token=ray_cluster.token)
    assert jobs.status("no-such-job") == "missing"


def test_wrong_token_is_refused(ray_cluster) -> None:
    jobs = RayJobs(ray_cluster.dashboard_url, token="0" * 64)
    with pytest.raises(RayJobsError):
        jobs.submit(python("print(1)"), f"test-{uuid.uuid4().hex[:8]}", {})


def test_a_cluster_that_never_answers_fails_a_call_within_its_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        jobs = RayJobs(f"http://127.0.0.1:{silent.getsockname()[1]}", token="t", timeout=1.0)
        start = time.monotonic()
        with pytest.raises(RayJobsError, match="status of job j"):
            jobs.status("j")
        assert time.monotonic() - start < 5
