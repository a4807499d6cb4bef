"""Rows of the warm standby drivers, and the hand-over of a sweep to one.

Every function works inside the caller's session (see :mod:`service.dispatch.standby`).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.store.db import affected
from service.store.jobs import assign_job
from service.store.models import StandbyDriver, Sweep, utcnow
from service.store.sweeps import set_job
from workers.events import FINAL_SWEEP_STATUSES


def add_standby(session: Session, job_id: str) -> None:
    """Record a standby driver job before it is submitted (so it can find its row)."""
    session.add(StandbyDriver(job_id=job_id))


def standbys(session: Session) -> list[StandbyDriver]:
    """The unclaimed standby drivers, oldest first."""
    stmt = select(StandbyDriver).order_by(StandbyDriver.created_at, StandbyDriver.job_id)
    return list(session.scalars(stmt))


def remove_standby(session: Session, job_id: str) -> None:
    """Forget a standby driver (gone, retired, or failed to submit); idempotent."""
    driver = session.get(StandbyDriver, job_id)
    if driver is not None:
        session.delete(driver)


def claim_standby(
    session: Session, sweep_id: int, job_id: str, old_job: str | None, *, count: bool
) -> bool:
    """Hand the sweep to the standby driver ``job_id`` in place of its job ``old_job``
    (counting a resume when ``count``); False, with nothing changed, when the standby is no
    longer unclaimed or someone else acted on the sweep first.

    The standby's row goes and the sweep's ``ray_job_id`` names the job in one transaction,
    so the job sees either itself unclaimed or its sweep, never neither.
    """
    if not set_job(session, sweep_id, old_job, job_id, count=count):
        return False
    if not affected(session, delete(StandbyDriver).where(StandbyDriver.job_id == job_id)):
        session.rollback()
        return False
    assign_job(session, job_id, sweep_id)
    return True


def mark_standby_ready(session: Session, job_id: str) -> bool:
    """The standby job is warm; False when its row is gone (it was retired meanwhile)."""
    driver = session.get(StandbyDriver, job_id)
    if driver is None:
        return False
    driver.ready_at = driver.ready_at or utcnow()
    return True


def standby_poll(session: Session, job_id: str) -> tuple[int | None, bool]:
    """(the id of the open sweep the Ray job ``job_id`` is to drive, or None; whether the job
    is still an unclaimed standby), read in one statement.

    A claim (:func:`claim_standby`) names the job on the sweep and deletes its row in one
    transaction; two statements could see its commit between them (PostgreSQL's statements
    each see what was committed before they began) and read the standby as neither claimed nor
    a standby, so that it would retire from a sweep just handed to it.
    """
    sweep = (
        select(Sweep.id)
        .where(Sweep.ray_job_id == job_id, Sweep.status.not_in(FINAL_SWEEP_STATUSES))
        .limit(1)
        .scalar_subquery()
    )
    unclaimed = select(StandbyDriver.job_id).where(StandbyDriver.job_id == job_id).exists()
    sweep_id, waiting = session.execute(select(sweep, unclaimed)).one()
    return sweep_id, bool(waiting)
