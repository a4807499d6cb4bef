"""Deleting the API's Ray jobs once they are done with, so the head's job table (and what it
keeps per job) stays bounded over a deployment's life.

Every job the API submits is recorded first (:mod:`service.store.jobs`). A sweep's jobs are
deleted once the sweep is final and MLflow has all of it, after the tail of its last driver's
log is kept with the sweep (``GET /sweeps/{id}/log``); a standby's or a zygote's once it ended.
A record is forgotten once Ray does not know it and it is older than :data:`SUBMIT_GRACE_S`
(its submission may be under way), never in the pass that deletes it: Ray's job manager may
write an ended job's record once more just after (it is then deleted again). Ray keeps a
deleted job's log file on its node's disk.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.errors import DispatchError
from service.store.db import session_scope
from workers.errors import RayJobsError
from workers.jobs import LIVE_JOB_STATES, JobClient

log = logging.getLogger(__name__)
SUBMIT_GRACE_S = 30.0


class Janitor:
    """Deletes the recorded Ray jobs that are done with (see the module)."""

    def __init__(self, factory: sessionmaker[Session], jobs: JobClient) -> None:
        self.factory = factory
        self.jobs = jobs

    def clear(self) -> None:
        """One pass over the recorded jobs (cut short while Ray cannot be reached)."""
        try:
            self._clear()
        except (DispatchError, RayJobsError) as err:
            log.warning("cannot delete ended Ray jobs now: %s", err)

    def _clear(self) -> None:
        with session_scope(self.factory) as session:
            rows = store.recorded_jobs(session)
        deleted = 0
        for row in rows:
            if not row.sweep_done:
                continue
            state = self.jobs.status(row.job_id)
            if state in LIVE_JOB_STATES or (state == "missing" and row.age_s < SUBMIT_GRACE_S):
                continue  # a driver exits just after its sweep ends; a submission is under way
            # A record Ray wrote again after the delete answers an empty log: the tail kept
            # from the first pass stays.
            sweep_id = row.sweep_id if row.current and state != "missing" else None
            if sweep_id is not None and (tail := self.jobs.logs(row.job_id)):
                with session_scope(self.factory) as session:
                    store.keep_driver_log(session, sweep_id, tail)
            if state != "missing":
                self.jobs.delete(row.job_id)
                deleted += 1
                continue  # forgotten once a later pass finds it gone: Ray may write it again
            with session_scope(self.factory) as session:
                store.forget_job(session, row.job_id)
        if deleted:
            log.info("deleted %d ended Ray jobs", deleted)
