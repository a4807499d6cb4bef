"""Sweep rows: creation (idempotent), lookups, versions and status transitions.

Every function works inside the caller's session. Status transitions are compare-and-set
(``UPDATE … WHERE status …``), so whoever writes concurrently, a final sweep status
(:data:`workers.events.FINAL_SWEEP_STATUSES`) is never replaced and an accepted cancel is never
lost: a sweep that is ``cancelling`` ends ``cancelled`` whatever status its end reports.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import IdempotencyConflictError, SweepFinishedError, SweepNotFoundError
from service.store.db import affected
from service.store.models import Sweep, Trial, utcnow
from workers.events import FINAL_SWEEP_STATUSES
from workers.spec import SweepSpec


def body_hash(spec: SweepSpec) -> str:
    """A stable hash of the validated request, to recognise an idempotent resubmission."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_sweep(
    session: Session, spec: SweepSpec, idempotency_key: str | None = None
) -> tuple[Sweep, bool]:
    """Store a new sweep, or return the one made earlier with the same idempotency key.

    Returns:
        The sweep and whether it was created by this call.

    Raises:
        IdempotencyConflictError: the key was used before with a different body.
    """
    earlier = find_replay(session, spec, idempotency_key)
    if earlier is not None:
        return earlier, False
    digest = body_hash(spec)
    sweep = Sweep(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        planned_trials=spec.num_trials,
        metric_name=spec.metric.name,
        metric_goal=spec.metric.goal,
        idempotency_key=idempotency_key,
        body_hash=digest,
        experiment_name=f"sweeps/{spec.name}",
    )
    try:
        with session.begin_nested():
            session.add(sweep)
    except IntegrityError:  # a concurrent request with the same key won the race
        earlier = _by_idempotency_key(session, str(idempotency_key), digest)
        if earlier is None:
            raise
        return earlier, False
    return sweep, True


def find_replay(session: Session, spec: SweepSpec, idempotency_key: str | None) -> Sweep | None:
    """The sweep an earlier request with this idempotency key made, if any.

    Raises:
        IdempotencyConflictError: the key was used before with a different body.
    """
    if idempotency_key is None:
        return None
    return _by_idempotency_key(session, idempotency_key, body_hash(spec))


def open_count(session: Session) -> int:
    """How many sweeps have not reached a final status."""
    stmt = select(func.count()).select_from(Sweep).where(Sweep.status.not_in(FINAL_SWEEP_STATUSES))
    return int(session.scalar(stmt) or 0)


def _by_idempotency_key(session: Session, key: str, digest: str) -> Sweep | None:
    sweep = session.scalar(select(Sweep).where(Sweep.idempotency_key == key))
    if sweep is not None and sweep.body_hash != digest:
        raise IdempotencyConflictError(  # the key is the client's input: never echoed
            f"this Idempotency-Key was already used for sweep {sweep.id} with a different "
            "request body; resend that exact body, or use a new key for a new sweep"
        )
    return sweep


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    """The sweep with this id.

    Raises:
        SweepNotFoundError: there is none.
    """
    sweep = session.scalar(select(Sweep).where(Sweep.id == sweep_id))
    if sweep is None:
        raise SweepNotFoundError(f"sweep {sweep_id} does not exist")
    return sweep


def sweep_status(session: Session, sweep_id: int) -> str:
    """The sweep's status alone (one indexed read).

    Raises:
        SweepNotFoundError: there is none.
    """
    status = session.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
    if status is None:
        raise SweepNotFoundError(f"sweep {sweep_id} does not exist")
    return status


def sweep_version(session: Session, sweep_id: int) -> str:
    """A token that changes whenever anything the API reports about the sweep changes (its
    row, its trials' rows, their epochs), in one query over the sweep's row and its trials'.

    Every write to these rows moves an ``updated_at`` or adds a row (a new epoch moves its
    trial's: :func:`~service.store.trials.record_epoch`), so the version digests the sweep's
    status and ``updated_at`` with the count and latest ``updated_at`` of its trials; it never
    reads the epochs, whose count grows with the sweep (long polls ask this ten times a second).

    Raises:
        SweepNotFoundError: there is none.
    """
    of_sweep = Trial.sweep_id == sweep_id
    stmt = select(
        Sweep.status,
        Sweep.updated_at,
        select(func.count()).where(of_sweep).scalar_subquery(),
        select(func.max(Trial.updated_at)).where(of_sweep).scalar_subquery(),
    ).where(Sweep.id == sweep_id)
    row = session.execute(stmt).first()
    if row is None:
        raise SweepNotFoundError(f"sweep {sweep_id} does not exist")
    return hashlib.sha256(repr(tuple(row)).encode()).hexdigest()[:16]


def list_sweeps(
    session: Session, *, status: str | None, limit: int, offset: int
) -> tuple[list[Sweep], int]:
    """A page of sweeps, newest first, and how many match ``status`` in all."""
    where = [Sweep.status == status] if status else []
    count = session.scalar(select(func.count()).select_from(Sweep).where(*where)) or 0
    stmt = select(Sweep).where(*where).order_by(Sweep.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt)), count


def open_sweeps(session: Session) -> list[Sweep]:
    """Every sweep that has not reached a final status, oldest first."""
    stmt = select(Sweep).where(Sweep.status.not_in(FINAL_SWEEP_STATUSES)).order_by(Sweep.id)
    return list(session.scalars(stmt))


def set_job(
    session: Session, sweep_id: int, old_job: str | None, new_job: str, *, count: bool
) -> bool:
    """Name the Ray job that runs (or will run) the sweep in place of ``old_job``, counting a
    resume when ``count``; False, with nothing changed, when someone acted on the sweep first
    (its job is no longer ``old_job``, or it ended)."""
    values: dict[str, Any] = {"ray_job_id": new_job, "heartbeat_at": None}
    if count:
        values["resumes"] = Sweep.resumes + 1
    changed = affected(
        session,
        update(Sweep)
        .where(
            Sweep.id == sweep_id,
            Sweep.ray_job_id.is_(None) if old_job is None else Sweep.ray_job_id == old_job,
            Sweep.status.not_in(FINAL_SWEEP_STATUSES),
        )
        .values(**values)
        .execution_options(synchronize_session="fetch"),
    )
    return bool(changed)


def mark_started(session: Session, sweep_id: int, experiment_path: str) -> None:
    """The driver runs: ``pending`` becomes ``running``; any other status stays as it is."""
    now = utcnow()
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status == "pending")
        .values(status="running")
        .execution_options(synchronize_session="fetch")
    )
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(
            started_at=func.coalesce(Sweep.started_at, now),
            experiment_path=experiment_path,
            heartbeat_at=now,
        )
        .execution_options(synchronize_session="fetch")
    )


def beat(session: Session, sweep_id: int) -> None:
    """The sweep's driver is alive (a heartbeat); does not move the sweep's version."""
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(heartbeat_at=utcnow(), updated_at=Sweep.updated_at)
        .execution_options(synchronize_session="fetch")
    )


def request_cancel(session: Session, sweep_id: int) -> str:
    """Ask the driver to cancel; returns the status after the request (``cancelling``, or
    ``cancelled`` when it already was).

    Raises:
        SweepNotFoundError: there is no such sweep.
        SweepFinishedError: the sweep already completed or failed.
    """
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status.in_(("pending", "running")))
        .values(status="cancelling", cancel_requested_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    status = sweep_status(session, sweep_id)
    if status not in ("cancelling", "cancelled"):
        raise SweepFinishedError(f"sweep {sweep_id} already ended ({status})")
    return status


def finish_sweep(
    session: Session, sweep_id: int, status: str, message: str = "", best: int | None = None
) -> bool:
    """Give the sweep its final status unless it has one; returns whether it changed.

    A sweep being cancelled ends ``cancelled`` whatever ``status`` says. ``best``, the number
    of its best trial, is stored as that trial's key (none when it has no such trial).
    """
    assert status in FINAL_SWEEP_STATUSES, status
    best_key = None
    if best is not None:
        of_best = (Trial.sweep_id == sweep_id, Trial.number == best)
        best_key = select(Trial.key).where(*of_best).scalar_subquery()
    changed = affected(
        session,
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status.not_in(FINAL_SWEEP_STATUSES))
        .values(
            status=case((Sweep.status == "cancelling", "cancelled"), else_=status),
            message=message,
            best_trial_key=best_key,
            ended_at=utcnow(),
        )
        .execution_options(synchronize_session="fetch"),
    )
    return bool(changed)


def cancelling_since(session: Session, before: datetime) -> list[Sweep]:
    """Sweeps whose cancellation was requested before ``before`` and has not finished."""
    stmt = select(Sweep).where(Sweep.status == "cancelling", Sweep.cancel_requested_at <= before)
    return list(session.scalars(stmt))
