"""Running sweeps as Ray jobs: submit, cancel fallback and reconciliation.

One Ray job per sweep drives it: a warm standby claimed from
:class:`~service.dispatch.standby.StandbyPool` when one is alive, otherwise a job of its own
(:func:`~service.dispatch.commands.sweep_command`). Job ids are stored before the job is
submitted. One API process per database is assumed (``uvicorn --workers 1``).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.config import Settings
from service.dispatch import mlflow_http
from service.dispatch.commands import sweep_command
from service.dispatch.standby import StandbyPool, WarmCount
from service.errors import DispatchError
from service.store.db import session_scope
from service.store.models import Sweep, utcnow
from workers.errors import RayJobsError
from workers.events import FINAL_SWEEP_STATUSES
from workers.jobs import LIVE_JOB_STATES, JobClient, RayJobs
from workers.tracking import TRACKING_ENV, close_sweep_runs

log = logging.getLogger(__name__)
SUBMIT_GRACE = timedelta(seconds=30)
"""A new sweep without a job is left to the request that is submitting it for this long."""


def make_job_client(settings: Settings) -> JobClient:
    """The Ray Jobs API client for the configured cluster."""
    token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
    return RayJobs(settings.ray_dashboard_url, token=token)


class Dispatcher:
    """Submits, stops and reconciles the Ray jobs of sweeps (thread-safe)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], jobs: JobClient) -> None:
        self.settings = settings
        self.factory = factory
        self.jobs = jobs
        self.standbys = StandbyPool(settings, factory, jobs)
        self._lock = threading.RLock()

    def submit(
        self, sweep_id: int, *, resume: bool = False, new_attempt: bool = False, reason: str = ""
    ) -> None:
        """Submit the sweep's job; a failed submission is retried by the next reconciliation.

        Args:
            sweep_id: the sweep.
            resume: the job restores Tune's experiment state when there is one.
            new_attempt: the previous job ran and ended; count a resume and use a new job id
                (a job Ray never knew keeps its id and costs no resume).
            reason: why, kept as the sweep's message.
        """
        with self._lock:
            warm = self.standbys.live_standby() if self.settings.warm_drivers else None
            with session_scope(self.factory) as session:
                sweep = store.get_sweep(session, sweep_id)
                if sweep.status in FINAL_SWEEP_STATUSES:
                    return
                if new_attempt:
                    sweep.resumes += 1
                if reason:
                    sweep.message = reason
                self._resolve_experiment(sweep)
                claimed = warm is not None and store.claim_standby(session, sweep, warm)
                job_id = f"sweep-{sweep.id}-{sweep.uid[:8]}-{sweep.resumes}"
                if not claimed:
                    store.record_job(session, sweep, job_id)
            if claimed:
                log.info("sweep %s: handed to standby driver %s", sweep_id, warm)
                return
            env = self.settings.job_env() | TRACKING_ENV
            entrypoint = sweep_command(self.settings.job_python, sweep_id, resume=resume)
            try:
                self.jobs.submit(entrypoint, job_id, env)
            except (DispatchError, RayJobsError) as err:
                log.warning("sweep %s: submitting %s failed: %s", sweep_id, job_id, err)
                self._note(sweep_id, f"could not submit Ray job {job_id} ({err}); will retry")

    def keep_warm(self, *, check_jobs: bool = False) -> None:
        """Keep the standby drivers topped up (see :class:`~.standby.StandbyPool`)."""
        with self._lock:
            self.standbys.keep_warm(check_jobs=check_jobs)

    def retire_standbys(self) -> None:
        """Retire every unclaimed standby driver (the API shuts down)."""
        with self._lock:
            self.standbys.retire_all()

    def warm_count(self) -> WarmCount:
        """Standby drivers ready, starting and wanted."""
        return self.standbys.count()

    def _resolve_experiment(self, sweep: Sweep) -> None:
        if sweep.mlflow_experiment_id is None:
            try:
                sweep.mlflow_experiment_id = mlflow_http.ensure_experiment(
                    self.settings.mlflow_tracking_uri, sweep.experiment_name
                )
            except DispatchError as err:  # the job creates it; only the link waits
                log.warning("sweep %s: %s", sweep.id, err)

    def _note(self, sweep_id: int, message: str) -> None:
        with session_scope(self.factory) as session:
            store.get_sweep(session, sweep_id).message = message

    def reconcile(self) -> None:
        """Match every open sweep with its Ray job: leave, resume, fail or finish cancelling."""
        with session_scope(self.factory) as session:
            ids = [s.id for s in store.open_sweeps(session)]
        for sweep_id in ids:
            try:
                self._reconcile_one(sweep_id)
            except (DispatchError, RayJobsError) as err:  # Ray unreachable: judge later
                log.warning("sweep %s: cannot reconcile: %s", sweep_id, err)

    def _reconcile_one(self, sweep_id: int) -> None:
        with self._lock:
            with session_scope(self.factory) as session:
                sweep = store.get_sweep(session, sweep_id)
                status, job_id = sweep.status, sweep.ray_job_id
                young = sweep.created_at > utcnow() - SUBMIT_GRACE
                resumes, started = sweep.resumes, sweep.started_at is not None
            if status in FINAL_SWEEP_STATUSES or (job_id is None and young):
                return
            state = self.jobs.status(job_id) if job_id else "missing"
            if state in LIVE_JOB_STATES:
                return
            reason = f"Ray job {job_id} is {state}"
            if status == "cancelling":
                self.finish_cancel(sweep_id, f"{reason}; the sweep was cancelled")
            elif state == "missing":  # never submitted, or lost with a restarted cluster
                self.submit(sweep_id, resume=started, reason=f"{reason}; resubmitted")
            elif resumes < self.settings.max_resumes:
                log.info("sweep %s: %s; resuming", sweep_id, reason)
                self.submit(sweep_id, resume=True, new_attempt=True, reason=f"{reason}; resumed")
            else:
                self.fail(sweep_id, f"{reason} after {resumes} resumes; giving up")

    def enforce_cancel_deadlines(self) -> None:
        """Stop the jobs of sweeps whose driver has not cancelled within the grace period."""
        before = utcnow() - timedelta(seconds=self.settings.cancel_grace_seconds)
        with session_scope(self.factory) as session:
            late = [s.id for s in store.cancelling_since(session, before)]
        for sweep_id in late:
            self.finish_cancel(sweep_id, "cancelled: the driver did not stop in time, job stopped")

    def finish_cancel(self, sweep_id: int, message: str) -> None:
        """Stop the job, end open trials as cancelled, close MLflow runs as KILLED."""
        self._end(sweep_id, "cancelled", "cancelled", "KILLED", message)

    def fail(self, sweep_id: int, message: str) -> None:
        """Give up on a sweep: stop its job, fail open trials, close MLflow runs as FAILED."""
        self._end(sweep_id, "failed", "failed", "FAILED", message)

    def _end(
        self, sweep_id: int, status: str, trial_status: str, run_status: str, message: str
    ) -> None:
        with self._lock:
            with session_scope(self.factory) as session:
                sweep = store.get_sweep(session, sweep_id)
                if sweep.status in FINAL_SWEEP_STATUSES:
                    return  # the driver finished first
                job_id = sweep.ray_job_id
            if job_id is not None:
                try:
                    self.jobs.stop(job_id)
                except (DispatchError, RayJobsError) as err:
                    log.warning("sweep %s: stopping %s failed: %s", sweep_id, job_id, err)
            with session_scope(self.factory) as session:
                sweep = store.get_sweep(session, sweep_id)
                store.close_open_trials(session, sweep, trial_status, message)
                store.finish_sweep(session, sweep, status, message)
                experiments = [sweep.mlflow_experiment_id] if sweep.mlflow_experiment_id else None
                sweep_uid = sweep.uid
            self._close_runs(sweep_uid, run_status, experiments)

    def _close_runs(self, sweep_uid: str, run_status: str, experiments: list[str] | None) -> None:
        try:
            closed = close_sweep_runs(
                self.settings.mlflow_tracking_uri, sweep_uid, run_status, experiments
            )
            log.info("sweep %s: closed %d MLflow runs as %s", sweep_uid, closed, run_status)
        except Exception as err:  # MLflow down: the runs stay open, the database is right
            log.warning("sweep %s: closing MLflow runs failed: %s", sweep_uid, err)

    def check_dependencies(self) -> dict[str, str]:
        """``{"ray": ..., "mlflow": ...}``, each ``ok`` or why not."""
        mlflow = mlflow_http.check(self.settings.mlflow_tracking_uri)
        return {"ray": self._check_ray(), "mlflow": mlflow}

    def _check_ray(self) -> str:
        url = f"{self.settings.ray_dashboard_url.rstrip('/')}/api/version"
        token = self.settings.ray_auth_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        try:
            r = httpx.get(url, headers=headers, timeout=mlflow_http.TIMEOUT_S)
        except httpx.HTTPError as err:
            return f"unreachable at {self.settings.ray_dashboard_url}: {err}"
        return "ok" if r.status_code == 200 else f"unhealthy: HTTP {r.status_code} from {url}"
