"""Warm standby drivers: sweep jobs started before the sweeps they will drive.

A standby (:func:`~service.dispatch.commands.standby_command`) warms up, marks its row in
``standby_drivers`` ready and polls for a sweep whose ``ray_job_id`` names it; submitting a sweep
claims one in a single transaction. The pool keeps ``Settings.warm_drivers`` of them and starts
new ones only while no sweep is open. ARCHITECTURE.md ("Warm standby drivers") says why.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.config import Settings
from service.dispatch.commands import standby_command
from service.errors import DispatchError
from service.store.db import session_scope
from workers.errors import RayJobsError
from workers.jobs import LIVE_JOB_STATES, JobClient

log = logging.getLogger(__name__)
JOB_PREFIX = "sweeps-standby-"


@dataclass(frozen=True)
class WarmCount:
    """How many standbys are ready, how many still start, and how many are wanted."""

    ready: int
    starting: int
    wanted: int


class StandbyPool:
    """Starts, checks, hands out and retires the standby drivers of one database.

    Not thread-safe on its own: the :class:`~.dispatcher.Dispatcher` calls it under its lock.
    """

    def __init__(self, settings: Settings, factory: sessionmaker[Session], jobs: JobClient) -> None:
        self.settings = settings
        self.factory = factory
        self.jobs = jobs

    def count(self) -> WarmCount:
        """The pool as the database records it."""
        with session_scope(self.factory) as session:
            pool = store.standbys(session)
        ready = sum(d.ready_at is not None for d in pool)
        return WarmCount(ready, len(pool) - ready, self.settings.warm_drivers)

    def live_standby(self) -> str | None:
        """The job id of a standby whose job is alive, ready ones first; dead ones are dropped."""
        with session_scope(self.factory) as session:
            pool = store.standbys(session)
            order = [d.job_id for d in sorted(pool, key=lambda d: d.ready_at is None)]
        for job_id in order:
            if self._alive(job_id):
                return job_id
        return None

    def keep_warm(self, *, check_jobs: bool) -> None:
        """Top the pool up to ``warm_drivers`` while no sweep is open.

        Args:
            check_jobs: first ask Ray about every standby's job and drop those that ended.
        """
        with session_scope(self.factory) as session:
            ids = [d.job_id for d in store.standbys(session)]
            busy = bool(store.open_sweeps(session))
        if check_jobs:
            ids = [job_id for job_id in ids if self._alive(job_id)]
        if busy:
            return
        for _ in range(self.settings.warm_drivers - len(ids)):
            self._start()

    def retire_all(self) -> None:
        """Delete every unclaimed standby's row and stop its job (graceful shutdown)."""
        with session_scope(self.factory) as session:
            ids = [d.job_id for d in store.standbys(session)]
            for job_id in ids:
                store.remove_standby(session, job_id)
        for job_id in ids:
            try:
                self.jobs.stop(job_id)
            except (DispatchError, RayJobsError) as err:
                log.warning("stopping standby %s failed: %s", job_id, err)

    def _alive(self, job_id: str) -> bool:
        try:
            state = self.jobs.status(job_id)
        except (DispatchError, RayJobsError) as err:  # Ray unreachable: keep it, judge later
            log.warning("standby %s: cannot ask Ray: %s", job_id, err)
            return False
        if state in LIVE_JOB_STATES:
            return True
        log.info("standby %s is %s; dropping it", job_id, state)
        with session_scope(self.factory) as session:
            store.remove_standby(session, job_id)
        return False

    def _start(self) -> None:
        job_id = f"{JOB_PREFIX}{uuid.uuid4().hex[:12]}"
        with session_scope(self.factory) as session:
            store.add_standby(session, job_id)
        env = self.settings.job_env()
        try:
            self.jobs.submit(standby_command(self.settings.job_python, job_id), job_id, env)
        except (DispatchError, RayJobsError) as err:
            log.warning("starting standby %s failed: %s", job_id, err)
            with session_scope(self.factory) as session:
                store.remove_standby(session, job_id)
            return
        log.info("started standby driver %s", job_id)
