"""A client of Ray's Jobs REST API (each sweep's driver runs as one Ray job), and the
:class:`JobClient` protocol that the service's dispatcher and standby pool are written against.

It speaks the REST API (``/api/jobs/``) with a short timeout on every request, so a cluster that
hangs fails a call within seconds instead of holding the API's request or its monitor. Ray 2.60's
``ray start --head`` turns on token authentication: requests carry ``Authorization: Bearer
<token>``; the token is an argument, the service's settings hold it.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc
import httpx

from workers.errors import RayJobsError

log = logging.getLogger(__name__)
JobState = Literal["pending", "running", "succeeded", "failed", "stopped", "missing"]
LIVE_JOB_STATES: frozenset[str] = frozenset({"pending", "running"})
"""States of a job that has not ended."""
_STATES: dict[str, JobState] = {
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "stopped",
}
TIMEOUT_S = 5.0
"""The longest one request to the Jobs API may take."""


class JobClient(Protocol):
    """Submitting, following and stopping jobs: what the service needs of Ray's Jobs API.

    :class:`RayJobs` is the implementation; every method raises
    :class:`~workers.errors.RayJobsError` when the cluster cannot be reached or refuses.
    """

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        env_vars: dict[str, str],
        resources: dict[str, float] | None = None,
    ) -> str: ...

    def status(self, job_id: str) -> JobState: ...

    def stop(self, job_id: str) -> bool: ...

    def nodes(self) -> list[Node]: ...

    def logs(self, job_id: str) -> str: ...

    def delete(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class Node:
    """A live node of the cluster and what it has (``CPU``, ``GPU``, memory... as Ray counts)."""

    name: str
    resources: dict[str, float]

    @property
    def pin(self) -> str | None:
        """The resource only this node's address has (``node:<ip>``), which places a job's
        entrypoint on it; None when Ray lists none."""
        return next((k for k in self.resources if k.startswith("node:") and "__" not in k), None)


class RayJobs:
    """Submit, follow and stop Ray jobs on the cluster whose dashboard is ``dashboard_url``.

    Every method raises :class:`~workers.errors.RayJobsError` when the cluster cannot be reached
    within ``timeout`` seconds or refuses the request. Thread safe.
    """

    def __init__(
        self, dashboard_url: str, token: str | None = None, timeout: float = TIMEOUT_S
    ) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.dashboard_url, headers=headers, timeout=timeout)
        atexit.register(self._http.close)

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        env_vars: dict[str, str],
        resources: dict[str, float] | None = None,
    ) -> str:
        """Start ``entrypoint`` (a shell command) as job ``submission_id``; returns the id.

        ``env_vars`` is the job's environment on top of the cluster's. Use absolute paths
        (``sys.executable``): the job's PATH is the cluster's, not the caller's. ``resources``
        (``{"node:10.0.0.3": 0.01}``) places the entrypoint on a node that has them; without,
        it runs on the head node.
        """
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "runtime_env": {"env_vars": dict(env_vars)},
        }
        if resources:
            body["entrypoint_resources"] = dict(resources)
        what = f"submitting job {submission_id}"
        answer = self._request("POST", "/api/jobs/", what, body)
        if answer is None:  # the dashboard is up, its Jobs API not yet
            raise RayJobsError(f"{what}: Ray's Jobs API at {self.dashboard_url} is not ready")
        return str(answer["submission_id"])

    def status(self, job_id: str) -> JobState:
        """The job's state; ``missing`` when the cluster does not know it (e.g. restarted)."""
        answer = self._request("GET", f"/api/jobs/{job_id}", f"status of job {job_id}")
        if answer is None:
            return "missing"
        return _STATES[str(answer["status"])]

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM, then SIGKILL); False when it had already ended."""
        answer = self._request("POST", f"/api/jobs/{job_id}/stop", f"stopping job {job_id}")
        return bool(answer and answer.get("stopped"))

    def nodes(self) -> list[Node]:
        """The cluster's live nodes."""
        answer = self._request("GET", "/api/v0/nodes?detail=true", "listing the nodes") or {}
        found = answer.get("data", {}).get("result", {}).get("result", [])
        return [
            Node(str(n.get("node_ip") or n.get("node_id")), dict(n.get("resources_total") or {}))
            for n in found
            if n.get("state") == "ALIVE"
        ]

    def logs(self, job_id: str) -> str:
        """The job's output so far (driver stdout and stderr)."""
        answer = self._request("GET", f"/api/jobs/{job_id}/logs", f"logs of job {job_id}")
        return str((answer or {}).get("logs", ""))

    def delete(self, job_id: str) -> bool:
        """Delete an ended job from the cluster's job table; False when it was not there."""
        answer = self._request("DELETE", f"/api/jobs/{job_id}", f"deleting job {job_id}")
        return bool(answer and answer.get("deleted"))

    def job_ids(self) -> list[str]:
        """The submission ids of every job the cluster's job table holds."""
        answer = self._request("GET", "/api/jobs/", "listing the jobs")
        jobs: list[dict[str, Any]] = answer if isinstance(answer, list) else []
        return [str(j["submission_id"]) for j in jobs if j.get("submission_id")]

    def _request(
        self, method: str, path: str, what: str, body: dict[str, Any] | None = None
    ) -> Any:
        """The JSON answer, or None when the job does not exist (404)."""
        try:
            r = self._http.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise RayJobsError(f"{what}: Ray's Jobs API at {self.dashboard_url}: {err}") from err
        if r.status_code == 404:
            log.info("%s: the cluster does not know the job: %s", what, r.text[:200])
            return None
        if r.status_code != 200:
            raise RayJobsError(f"{what} failed: HTTP {r.status_code}: {r.text[:500]}")
        try:
            answer = r.json()
        except ValueError as err:
            raise RayJobsError(f"{what}: not JSON: {r.text[:200]}") from err
        return answer


GCS_HEALTH = "/grpc.health.v1.Health/Check"
"""The gRPC health check Ray's GCS serves (an empty request asks about the server)."""
SERVING = b"\x08\x01"
"""A ``HealthCheckResponse`` whose status is ``SERVING``."""


def gcs_answers(address: str, timeout: float = TIMEOUT_S) -> bool:
    """Whether the Ray GCS at ``address`` (host:port) answers its health check: alive and
    serving, not merely accepting connections (a frozen GCS accepts them)."""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            GCS_HEALTH, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            return bool(check(b"", timeout=timeout) == SERVING)
        except grpc.RpcError:
            return False
