"""Rows of the Ray jobs the API submitted, until each is deleted from Ray.

Every function works inside the caller's session (see :mod:`service.dispatch.janitor`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.store.models import RayJob, Sweep, utcnow
from workers.events import FINAL_SWEEP_STATUSES

LOG_TAIL_CHARS = 20_000
"""How much of a final sweep's last driver log is kept when its jobs are deleted."""


@dataclass(frozen=True)
class JobRow:
    """A recorded job and, for a sweep's job, whether that sweep is done (final, in MLflow)
    and whether this is the sweep's current job (the one whose log is kept)."""

    job_id: str
    sweep_id: int | None
    age_s: float
    sweep_done: bool
    current: bool


def add_job(session: Session, job_id: str, sweep_id: int | None = None) -> None:
    """Record a job before it is submitted (``sweep_id`` None: a standby or a zygote)."""
    session.merge(RayJob(job_id=job_id, sweep_id=sweep_id))


def assign_job(session: Session, job_id: str, sweep_id: int) -> None:
    """A claimed standby's job now drives ``sweep_id``."""
    session.execute(update(RayJob).where(RayJob.job_id == job_id).values(sweep_id=sweep_id))


def forget_job(session: Session, job_id: str) -> None:
    """The job is deleted from Ray (or was never submitted); idempotent."""
    session.execute(delete(RayJob).where(RayJob.job_id == job_id))


def recorded_jobs(session: Session) -> list[JobRow]:
    """Every recorded job, oldest first."""
    stmt = (
        select(RayJob, Sweep.status, Sweep.mlflow_done, Sweep.ray_job_id)
        .outerjoin(Sweep, Sweep.id == RayJob.sweep_id)
        .order_by(RayJob.created_at, RayJob.job_id)
    )
    now = utcnow()
    return [
        JobRow(
            job_id=job.job_id,
            sweep_id=job.sweep_id,
            age_s=(now - job.created_at).total_seconds(),
            sweep_done=status is None or (status in FINAL_SWEEP_STATUSES and bool(done)),
            current=current == job.job_id,
        )
        for job, status, done, current in session.execute(stmt)
    ]


def keep_driver_log(session: Session, sweep_id: int, log: str) -> None:
    """Keep the tail of the sweep's last driver log (:data:`LOG_TAIL_CHARS`)."""
    session.execute(
        update(Sweep).where(Sweep.id == sweep_id).values(driver_log=log[-LOG_TAIL_CHARS:])
    )
