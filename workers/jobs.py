"""A thin client of Ray's Jobs API (each sweep's driver runs as one Ray job), and the
:class:`JobClient` protocol that the service's dispatcher and standby pool are written against.

Ray 2.60's ``ray start --head`` turns on token authentication: Jobs API clients send
``Authorization: Bearer <token>``. The token is an argument; the service's settings hold it.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from ray.job_submission import JobStatus, JobSubmissionClient

from workers.errors import RayJobsError

log = logging.getLogger(__name__)

JobState = Literal["pending", "running", "succeeded", "failed", "stopped", "missing"]
LIVE_JOB_STATES: frozenset[str] = frozenset({"pending", "running"})
"""States of a job that has not ended."""
_STATES: dict[JobStatus, JobState] = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "stopped",
}


class JobClient(Protocol):
    """Submitting, following and stopping jobs: what the service needs of Ray's Jobs API.

    :class:`RayJobs` is the implementation; every method raises
    :class:`~workers.errors.RayJobsError` when the cluster cannot be reached or refuses.
    """

    def submit(self, entrypoint: str, submission_id: str, env_vars: dict[str, str]) -> str: ...

    def status(self, job_id: str) -> JobState: ...

    def stop(self, job_id: str) -> bool: ...


class RayJobs:
    """Submit, follow and stop Ray jobs on the cluster whose dashboard is ``dashboard_url``.

    Every method raises :class:`~workers.errors.RayJobsError` when the cluster cannot be reached
    or refuses the request. The connection is made on first use.
    """

    def __init__(self, dashboard_url: str, token: str | None = None) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        self._token = token
        self._client: JobSubmissionClient | None = None

    def _jobs(self) -> JobSubmissionClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
            try:
                self._client = JobSubmissionClient(self.dashboard_url, headers=headers)
            except Exception as err:  # ConnectionError, RuntimeError, requests errors
                raise RayJobsError(f"Ray's Jobs API at {self.dashboard_url}: {err}") from err
        return self._client

    def submit(self, entrypoint: str, submission_id: str, env_vars: dict[str, str]) -> str:
        """Start ``entrypoint`` (a shell command) as job ``submission_id``; returns the id.

        ``env_vars`` is the job's environment on top of the cluster's. Use absolute paths
        (``sys.executable``): the job's PATH is the cluster's, not the caller's.
        """
        try:
            return self._jobs().submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": dict(env_vars)},
            )
        except RayJobsError:
            raise
        except Exception as err:
            raise RayJobsError(f"submitting job {submission_id} failed: {err}") from err

    def status(self, job_id: str) -> JobState:
        """The job's state; ``missing`` when the cluster does not know it (e.g. restarted)."""
        try:
            return _STATES[self._jobs().get_job_status(job_id)]
        except RayJobsError:
            raise
        except RuntimeError as err:
            if "404" in str(err) or "does not exist" in str(err):
                log.info("job %s is missing: %s", job_id, err)
                return "missing"
            raise RayJobsError(f"status of job {job_id}: {err}") from err
        except Exception as err:
            raise RayJobsError(f"status of job {job_id}: {err}") from err

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM, then SIGKILL); False when it had already ended."""
        try:
            return bool(self._jobs().stop_job(job_id))
        except RayJobsError:
            raise
        except Exception as err:
            raise RayJobsError(f"stopping job {job_id} failed: {err}") from err

    def logs(self, job_id: str) -> str:
        """The job's output so far (driver stdout and stderr)."""
        try:
            return str(self._jobs().get_job_logs(job_id))
        except RayJobsError:
            raise
        except Exception as err:
            raise RayJobsError(f"logs of job {job_id}: {err}") from err
