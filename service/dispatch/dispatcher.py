"""Running sweeps as Ray jobs: submit, resubmit, cancel fallback, liveness and reconciliation.

One Ray job per sweep drives it: a warm standby claimed from
:class:`~service.dispatch.standby.StandbyPool` when one is alive, otherwise a job of its own
(:func:`~service.dispatch.commands.sweep_command`). Job ids are stored before the job is
submitted, and until its submission returns the monitor leaves the sweep alone (Ray cannot know
the job yet). No lock is held and no transaction is open across a call to Ray: every decision
is a compare-and-set in the database (:func:`service.store.set_job`, ``finish_sweep``), so the
request handlers and the monitor thread may act on one sweep at once and only one wins. One API
process at a time runs the monitor (the database's lease, :mod:`service.dispatch.lease`); any
process submits new sweeps, and the monitor leaves a pending sweep whose job Ray does not know
yet alone for :data:`SUBMIT_GRACE`, since another process may be submitting it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.config import Settings, write_database_url_file
from service.dispatch.commands import sweep_command
from service.dispatch.standby import StandbyPool, WarmCount
from service.errors import DispatchError, InputLimitError
from service.store.db import session_scope
from service.store.models import Sweep, utcnow
from workers.errors import RayJobsError
from workers.events import FINAL_SWEEP_STATUSES
from workers.jobs import LIVE_JOB_STATES, JobClient, Node, RayJobs, gcs_answers

log = logging.getLogger(__name__)
SUBMIT_GRACE = timedelta(seconds=30)
"""A new sweep without a job, or whose job Ray does not know, is left to the request that is
submitting it for this long."""
NODES_TTL_S = 30.0
"""How long the cluster's list of nodes is trusted when checking a sweep's resources."""
NO_NODES_TTL_S = 2.0
"""How long an empty listing (Ray could not say, or no node has joined yet) is kept."""


def make_job_client(settings: Settings) -> JobClient:
    """The Ray Jobs API client for the configured cluster."""
    token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
    return RayJobs(settings.ray_dashboard_url, token=token)


def job_id_of(sweep: Sweep, attempt: int) -> str:
    """``sweep-<id>-<uid8>-<attempt>``: the id of the sweep's own job for that attempt."""
    return f"sweep-{sweep.id}-{sweep.uid[:8]}-{attempt}"


class Dispatcher:
    """Submits, stops and reconciles the Ray jobs of sweeps (thread safe: see the module)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], jobs: JobClient) -> None:
        self.settings = settings
        self.factory = factory
        self.jobs = jobs
        write_database_url_file(settings)  # where jobs read it: never in their environment
        self.standbys = StandbyPool(settings, factory, jobs, lambda: self._node_list)
        self._ray_down_since: float | None = None  # monotonic; None while Ray answers
        self._submitting: set[str] = set()  # job ids stored, their submission under way
        self._submitting_lock = threading.Lock()  # guards the set alone, never a network call
        self._node_list: list[Node] = []
        self._nodes_at = float("-inf")
        self._misfit_since: dict[int, float] = {}  # sweep id -> when it first fit no node

    def submit(self, sweep_id: int) -> None:
        """Start a new sweep's first job: hand it to a live standby, or submit its own."""
        self._hand(sweep_id, old_job=None, count=False, resume=False, reason="")

    def resubmit(self, sweep_id: int, old_job: str | None, *, resume: bool, reason: str) -> None:
        """Replace the sweep's job ``old_job`` with a new one, counted toward ``max_resumes``
        (unless someone replaced or ended it first)."""
        self._hand(sweep_id, old_job=old_job, count=True, resume=resume, reason=reason)

    def _hand(
        self, sweep_id: int, *, old_job: str | None, count: bool, resume: bool, reason: str
    ) -> None:
        warm = self.standbys.live_standby() if self.standbys.wanted() else None
        with session_scope(self.factory) as session:
            claimed = warm is not None and store.claim_standby(
                session, sweep_id, warm, old_job, count=count
            )
            if claimed:
                self._note_in(session, sweep_id, reason)
                log.info("sweep %s: handed to standby driver %s", sweep_id, warm)
                return
            sweep = store.get_sweep(session, sweep_id)
            job_id = job_id_of(sweep, sweep.resumes + int(count))
            if not store.set_job(session, sweep_id, old_job, job_id, count=count):
                return  # someone else replaced or ended the sweep's job first
            store.add_job(session, job_id, sweep_id)  # deleted from Ray once the sweep is done
            self._note_in(session, sweep_id, reason)
            with self._submitting_lock:  # Ray cannot know the job before it is submitted
                self._submitting.add(job_id)
        fork = self.standbys.forks
        command = sweep_command(self.settings.job_python, sweep_id, resume=resume, fork=fork)
        try:
            self.jobs.submit(command, job_id, self.settings.job_env())
        except (DispatchError, RayJobsError) as err:
            log.warning("sweep %s: submitting %s failed: %s", sweep_id, job_id, err)
            self._note(sweep_id, f"could not submit Ray job {job_id} ({err}); will retry")
        finally:
            with self._submitting_lock:
                self._submitting.discard(job_id)

    def check_fits(self, cpu: float, gpu: float | None) -> None:
        """Refuse a trial no live node can ever hold (nodes are asked at most every
        :data:`NODES_TTL_S`; when Ray cannot say, the sweep is let through, and the monitor
        fails it after ``unschedulable_grace_seconds`` if it still fits no node).

        Raises:
            InputLimitError: naming the largest node.
        """
        why = _misfit(self._nodes(), cpu, gpu)
        if why is not None:
            raise InputLimitError("resources_per_trial", f"{why}: ask for at most that")

    def _fail_unschedulable(self) -> None:
        """Fail the open sweeps whose trials have fit no listed node for
        ``unschedulable_grace_seconds`` (nodes still joining get that long; a sweep admitted
        while Ray could not list its nodes is judged here)."""
        nodes = self._nodes()
        if not nodes:
            return  # Ray cannot say: the cluster's reachability is judged by reconcile
        with session_scope(self.factory) as session:
            wants = {
                s.id: s.spec.get("resources_per_trial", {}) for s in store.open_sweeps(session)
            }
        now = time.monotonic()
        grace = self.settings.unschedulable_grace_seconds
        for sweep_id in self._misfit_since.keys() - wants.keys():
            del self._misfit_since[sweep_id]
        for sweep_id, want in wants.items():
            why = _misfit(nodes, float(want.get("cpu", 1.0)), want.get("gpu"))
            if why is None:
                self._misfit_since.pop(sweep_id, None)
                continue
            since = self._misfit_since.setdefault(sweep_id, now)
            if now - since >= grace:
                self.fail(sweep_id, f"{why}, for {grace:.0f} s: no trial can ever start")

    def _nodes(self) -> list[Node]:
        ttl = NODES_TTL_S if self._node_list else NO_NODES_TTL_S
        if time.monotonic() - self._nodes_at > ttl:
            try:
                self._node_list = self.jobs.nodes()
            except RayJobsError as err:
                log.warning("cannot list Ray's nodes: %s", err)
                self._node_list = []
            self._nodes_at = time.monotonic()
        return self._node_list

    def keep_warm(self, *, check_jobs: bool = False) -> None:
        """Keep the zygotes and standby drivers up (see :class:`~.standby.StandbyPool`), on
        and sized to the cluster as last listed (listed again when older than
        :data:`NODES_TTL_S`)."""
        self._nodes()
        self.standbys.keep_warm(check_jobs=check_jobs)

    def retire_standbys(self) -> None:
        """Retire every unclaimed standby driver (the API shuts down)."""
        self.standbys.retire_all()

    def warm_count(self) -> WarmCount:
        """Standby drivers ready, starting and wanted."""
        return self.standbys.count()

    def _note(self, sweep_id: int, message: str) -> None:
        with session_scope(self.factory) as session:
            self._note_in(session, sweep_id, message)

    @staticmethod
    def _note_in(session: Session, sweep_id: int, message: str) -> None:
        if message:
            store.get_sweep(session, sweep_id).message = message

    def reconcile(self) -> None:
        """Match every open sweep with its Ray job: leave, replace, fail or finish cancelling;
        fail those whose trials fit no node for ``unschedulable_grace_seconds``; fail them all
        once Ray's Jobs API has been unreachable for ``ray_grace_seconds`` and its GCS does not
        answer either (while it does, the drivers train on and write to the database)."""
        with session_scope(self.factory) as session:
            ids = [s.id for s in store.open_sweeps(session)]
        for sweep_id in ids:
            try:
                self._reconcile_one(sweep_id)
            except (DispatchError, RayJobsError) as err:
                self._ray_unreachable(err)
                return
        self._ray_down_since = None
        self._fail_unschedulable()

    def _ray_unreachable(self, err: Exception) -> None:
        now = time.monotonic()
        self._ray_down_since = self._ray_down_since or now
        down = now - self._ray_down_since
        log.warning("cannot reach Ray for %.0f s: %s", down, err)
        if down < self.settings.ray_grace_seconds:
            return
        if gcs_answers(self.settings.ray_address):
            log.warning(
                "Ray's Jobs API has not answered for %.0f s but its GCS at %s does: the open "
                "sweeps' drivers train on; waiting for the Jobs API",
                down, self.settings.ray_address,
            )  # fmt: skip
            return
        with session_scope(self.factory) as session:
            ids = [s.id for s in store.open_sweeps(session)]
        url = self.settings.ray_dashboard_url
        why = f"the Ray cluster at {url} has been unreachable for {down:.0f} s ({err}); giving up"
        for sweep_id in ids:
            self.fail(sweep_id, why, stop_job=False)

    def _reconcile_one(self, sweep_id: int) -> None:
        with session_scope(self.factory) as session:
            sweep = store.get_sweep(session, sweep_id)
            status, job_id, resumes = sweep.status, sweep.ray_job_id, sweep.resumes
            young = sweep.created_at > utcnow() - SUBMIT_GRACE
            started, beat = sweep.started_at is not None, sweep.heartbeat_at
            handed = sweep.updated_at  # a pending sweep's row last changed when it was handed on
        if status in FINAL_SWEEP_STATUSES or (job_id is None and young):
            return
        with self._submitting_lock:
            if job_id in self._submitting:
                return  # being submitted right now
        state = self.jobs.status(job_id) if job_id else "missing"
        if state == "missing" and status == "pending" and handed > utcnow() - SUBMIT_GRACE:
            return  # another API process may be submitting it right now
        if state in LIVE_JOB_STATES:
            if job_id is not None and (silent := self._silent(status, beat, handed, job_id)):
                # Stopped now, replaced once Ray reports it ended: never two drivers at once.
                log.warning("sweep %s: %s; stopping its job", sweep_id, silent)
                self._note(sweep_id, f"{silent}; its job is stopped and will be resubmitted")
                self._stop(sweep_id, job_id)
            return
        reason = f"Ray job {job_id} is {state}"
        if status == "cancelling":
            self.finish_cancel(sweep_id, f"{reason}; the sweep was cancelled")
        elif resumes < self.settings.max_resumes:
            log.info("sweep %s: %s; resubmitting", sweep_id, reason)
            self.resubmit(sweep_id, job_id, resume=started, reason=f"{reason}; resubmitted")
        else:
            self.fail(sweep_id, f"{reason} after {resumes} resumes; giving up")

    def _silent(
        self, status: str, beat: datetime | None, handed: datetime, job_id: str
    ) -> str | None:
        """Why the live job of a sweep must be replaced: its driver stopped beating, or never
        started the sweep (it cannot reach the cluster, or hangs in start-up); else None."""
        stuck = self._stuck_for(beat)
        if stuck is not None and status == "running":
            return f"the driver of Ray job {job_id} has not beaten for {stuck:.0f} s"
        waited = self._stuck_for(handed) if status == "pending" and beat is None else None
        if waited is not None:
            return f"the driver of Ray job {job_id} has not started the sweep in {waited:.0f} s"
        return None

    def _stuck_for(self, beat: datetime | None) -> float | None:
        """Seconds since the driver's last beat when that is longer than allowed, else None."""
        if beat is None:
            return None  # its driver has not started yet
        silent = (utcnow() - beat).total_seconds()
        return silent if silent > self.settings.stuck_after_seconds else None

    def enforce_cancel_deadlines(self) -> None:
        """Stop the jobs of sweeps whose driver has not cancelled within the grace period."""
        before = utcnow() - timedelta(seconds=self.settings.cancel_grace_seconds)
        with session_scope(self.factory) as session:
            late = [s.id for s in store.cancelling_since(session, before)]
        for sweep_id in late:
            self.finish_cancel(sweep_id, "cancelled: the driver did not stop in time, job stopped")

    def finish_cancel(self, sweep_id: int, message: str) -> None:
        """Stop the job and end the sweep and its open trials as cancelled."""
        self._end(sweep_id, "cancelled", message, stop_job=True)

    def fail(self, sweep_id: int, message: str, *, stop_job: bool = True) -> None:
        """Give up on a sweep: stop its job, end it and its open trials as failed (cancelled,
        when a cancel was asked for)."""
        self._end(sweep_id, "failed", message, stop_job=stop_job)

    def _end(self, sweep_id: int, status: str, message: str, *, stop_job: bool) -> None:
        """The sweep's MLflow runs are closed by the tracking sender, from these statuses."""
        with session_scope(self.factory) as session:
            sweep = store.get_sweep(session, sweep_id)
            if sweep.status in FINAL_SWEEP_STATUSES:
                return  # the driver finished first
            job_id = sweep.ray_job_id
        if stop_job and job_id is not None:
            self._stop(sweep_id, job_id)
        with session_scope(self.factory) as session:
            if not store.finish_sweep(session, sweep_id, status, message):
                return
            final = store.sweep_status(session, sweep_id)  # cancelled, when a cancel was asked
            trial_status = "cancelled" if final == "cancelled" else "failed"
            store.close_open_trials(session, sweep_id, trial_status, message)

    def _stop(self, sweep_id: int, job_id: str) -> None:
        try:
            self.jobs.stop(job_id)
        except (DispatchError, RayJobsError) as err:
            log.warning("sweep %s: stopping %s failed: %s", sweep_id, job_id, err)


def _misfit(nodes: list[Node], cpu: float, gpu: float | None) -> str | None:
    """Why no node of ``nodes`` can hold a trial of ``cpu`` CPUs and ``gpu`` GPUs, naming the
    largest; None when one can, or when there is no listing."""
    wanted = {"CPU": cpu, "GPU": gpu or 0.0}
    if not nodes or any(
        all(n.resources.get(k, 0.0) >= v for k, v in wanted.items()) for n in nodes
    ):
        return None
    big = max(nodes, key=lambda n: (n.resources.get("GPU", 0.0), n.resources.get("CPU", 0.0)))
    has = f"CPU={big.resources.get('CPU', 0.0):g}, GPU={big.resources.get('GPU', 0.0):g}"
    return (
        f"a trial asks for cpu={cpu:g}, gpu={gpu or 0:g}, more than any node of the cluster "
        f"has; the largest node ({big.name}) has {has}"
    )
