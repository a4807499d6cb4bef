"""State transitions of sweeps and trials; every function works inside the caller's session.

Rules kept here, whoever calls (the API, the sweep job's sink, reconciliation):

* a final sweep or trial status (see :mod:`workers.events`) is never replaced;
* an epoch re-reported after a resume overwrites its earlier row instead of adding one;
* the best trial is judged by the metric at its last reported epoch and is never a
  diverged or failed trial.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from service.errors import (
    IdempotencyConflictError,
    SweepFinishedError,
    SweepNotFoundError,
    TrialNotFoundError,
)
from service.models import EpochMetric, StandbyDriver, Sweep, Trial, utcnow
from workers.events import FINAL_SWEEP_STATUSES, FINAL_TRIAL_STATUSES, TrialUpdate
from workers.spec import SweepSpec

NOT_BEST = frozenset({"diverged", "failed"})


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
    digest = body_hash(spec)
    if idempotency_key is not None:
        earlier = _by_idempotency_key(session, idempotency_key, digest)
        if earlier is not None:
            return earlier, False
    sweep = Sweep(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
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


def _by_idempotency_key(session: Session, key: str, digest: str) -> Sweep | None:
    sweep = session.scalar(select(Sweep).where(Sweep.idempotency_key == key))
    if sweep is not None and sweep.body_hash != digest:
        raise IdempotencyConflictError(
            f"Idempotency-Key '{key}' was already used for sweep {sweep.id} with a different "
            "request body; resend that exact body, or use a new key for a new sweep"
        )
    return sweep


def get_sweep(session: Session, sweep_id: int, *, lock: bool = False) -> Sweep:
    """The sweep with this id.

    Raises:
        SweepNotFoundError: there is none.
    """
    stmt = select(Sweep).where(Sweep.id == sweep_id)
    sweep = session.scalar(stmt.with_for_update() if lock else stmt)
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
    row, its trials' rows, their epochs), in one query.

    Every write to these rows moves an ``updated_at``/``reported_at`` or adds a row, so the
    version digests the sweep's status and ``updated_at`` with the count and latest timestamp
    of its trials and of their epochs.

    Raises:
        SweepNotFoundError: there is none.
    """
    of_sweep = Trial.sweep_id == sweep_id
    trials = select(Trial.id).where(of_sweep)
    stmt = select(
        Sweep.status,
        Sweep.updated_at,
        select(func.count()).where(of_sweep).scalar_subquery(),
        select(func.max(Trial.updated_at)).where(of_sweep).scalar_subquery(),
        select(func.count()).where(EpochMetric.trial_id.in_(trials)).scalar_subquery(),
        select(func.max(EpochMetric.reported_at))
        .where(EpochMetric.trial_id.in_(trials))
        .scalar_subquery(),
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


def record_job(session: Session, sweep: Sweep, job_id: str) -> None:
    """Remember the Ray job that runs (or will run) the sweep."""
    sweep.ray_job_id = job_id


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


def claim_standby(session: Session, sweep: Sweep, job_id: str) -> bool:
    """Hand ``sweep`` to the standby driver ``job_id``; False when it is no longer unclaimed.

    The standby's row goes and the sweep's ``ray_job_id`` names the job in one transaction,
    so the job sees either itself unclaimed or its sweep, never neither.
    """
    driver = session.get(StandbyDriver, job_id)
    if driver is None:
        return False
    session.delete(driver)
    sweep.ray_job_id = job_id
    session.flush()
    return True


def mark_standby_ready(session: Session, job_id: str) -> bool:
    """The standby job is warm; False when its row is gone (it was retired meanwhile)."""
    driver = session.get(StandbyDriver, job_id)
    if driver is None:
        return False
    driver.ready_at = driver.ready_at or utcnow()
    return True


def standby_exists(session: Session, job_id: str) -> bool:
    """Whether ``job_id`` is still an unclaimed standby."""
    return session.get(StandbyDriver, job_id) is not None


def sweep_for_job(session: Session, job_id: str) -> int | None:
    """The id of the open sweep the Ray job ``job_id`` is to drive, if any."""
    stmt = select(Sweep.id).where(
        Sweep.ray_job_id == job_id, Sweep.status.not_in(FINAL_SWEEP_STATUSES)
    )
    return session.scalars(stmt).first()


def mark_started(
    session: Session, sweep: Sweep, parent_run_id: str | None, experiment_path: str
) -> None:
    """The driver runs; keep a requested cancellation and never reopen a final sweep."""
    if sweep.status == "pending":
        sweep.status = "running"
    sweep.started_at = sweep.started_at or utcnow()
    sweep.parent_run_id = parent_run_id or sweep.parent_run_id
    sweep.experiment_path = experiment_path


def request_cancel(session: Session, sweep: Sweep) -> None:
    """Ask the driver to cancel (idempotent while cancelling and once cancelled).

    Raises:
        SweepFinishedError: the sweep already completed or failed.
    """
    if sweep.status == "cancelled":
        return
    if sweep.status in FINAL_SWEEP_STATUSES:
        raise SweepFinishedError(f"sweep {sweep.id} already ended ({sweep.status})")
    if sweep.status != "cancelling":
        sweep.status = "cancelling"
        sweep.cancel_requested_at = utcnow()


def finish_sweep(
    session: Session, sweep: Sweep, status: str, message: str = "", best_key: str | None = None
) -> bool:
    """Give the sweep its final status unless it has one; returns whether it changed."""
    assert status in FINAL_SWEEP_STATUSES, status
    if sweep.status in FINAL_SWEEP_STATUSES:
        return False
    sweep.status = status
    sweep.message = message
    sweep.best_trial_key = best_key
    sweep.ended_at = utcnow()
    return True


def close_open_trials(session: Session, sweep: Sweep, status: str, message: str) -> int:
    """Give every trial without a final status ``status``; returns how many changed."""
    assert status in FINAL_TRIAL_STATUSES, status
    stmt = select(Trial).where(
        Trial.sweep_id == sweep.id, Trial.status.not_in(FINAL_TRIAL_STATUSES)
    )
    trials = list(session.scalars(stmt))
    for trial in trials:
        trial.status, trial.message, trial.ended_at = status, message, utcnow()
    return len(trials)


def upsert_trial(session: Session, sweep_id: int, update: TrialUpdate) -> Trial:
    """Create or update a trial from the driver's report; a final status is never replaced."""
    trial = _trial_by_key(session, sweep_id, update.key)
    if trial.status in FINAL_TRIAL_STATUSES:
        return trial
    trial.status = update.status
    trial.params = update.params or trial.params
    trial.mlflow_run_id = update.mlflow_run_id or trial.mlflow_run_id
    trial.attempts = max(trial.attempts, update.attempt)
    trial.message = update.message or trial.message
    if update.status in FINAL_TRIAL_STATUSES:
        trial.ended_at = utcnow()
    return trial


def record_epoch(
    session: Session, sweep_id: int, trial_key: str, epoch: int, metrics: dict[str, Any]
) -> EpochMetric:
    """Store one epoch's finite metrics, overwriting an earlier report of the same epoch."""
    trial = _trial_by_key(session, sweep_id, trial_key)
    clean = finite_metrics(metrics)
    row = session.scalar(
        select(EpochMetric).where(EpochMetric.trial_id == trial.id, EpochMetric.epoch == epoch)
    )
    if row is None:
        row = EpochMetric(trial_id=trial.id, epoch=epoch, metrics=clean)
        session.add(row)
    else:
        row.metrics = clean
    session.flush()
    return row


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the finite numbers of ``metrics`` (JSON has no NaN or infinity)."""
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _trial_by_key(session: Session, sweep_id: int, key: str) -> Trial:
    trial = session.scalar(select(Trial).where(Trial.sweep_id == sweep_id, Trial.key == key))
    if trial is None:
        trial = Trial(sweep_id=sweep_id, key=key, number=_number(session, sweep_id, key))
        session.add(trial)
        session.flush()
    return trial


def _number(session: Session, sweep_id: int, key: str) -> int:
    """Tune's 1-based index (``3fa2b_00002`` -> 3, as in MLflow run names), else the next free."""
    suffix = key.rsplit("_", 1)[-1]
    taken = set(session.scalars(select(Trial.number).where(Trial.sweep_id == sweep_id)))
    wanted = int(suffix) + 1 if suffix.isdigit() else 0
    return wanted if wanted > 0 and wanted not in taken else max(taken, default=0) + 1


def list_trials(
    session: Session, sweep: Sweep, *, status: str | None, limit: int, offset: int
) -> tuple[list[Trial], int]:
    """A page of the sweep's trials in creation order, with their epochs loaded."""
    where = [Trial.sweep_id == sweep.id] + ([Trial.status == status] if status else [])
    count = session.scalar(select(func.count()).select_from(Trial).where(*where)) or 0
    stmt = (
        select(Trial)
        .where(*where)
        .options(selectinload(Trial.epochs))
        .order_by(Trial.number)
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt)), count


def get_trial(session: Session, sweep: Sweep, number: int) -> Trial:
    """The sweep's trial with this number (1-based, in creation order).

    Raises:
        TrialNotFoundError: there is none.
    """
    stmt = select(Trial).where(Trial.sweep_id == sweep.id, Trial.number == number)
    trial = session.scalar(stmt.options(selectinload(Trial.epochs)))
    if trial is None:
        raise TrialNotFoundError(f"sweep {sweep.id} has no trial {number}")
    return trial


def trial_counts(session: Session, sweep: Sweep) -> dict[str, int]:
    """How many of the sweep's trials are in each status."""
    stmt = (
        select(Trial.status, func.count()).where(Trial.sweep_id == sweep.id).group_by(Trial.status)
    )
    return {status: int(n) for status, n in session.execute(stmt)}


@dataclass(frozen=True)
class Best:
    """The best trial so far and its metric value at its last reported epoch."""

    trial: Trial
    value: float
    epoch: int


def best_trial(session: Session, sweep: Sweep, metric: str, goal: str) -> Best | None:
    """The best trial by ``metric`` at its last epoch; diverged and failed trials never count."""
    last = (
        select(EpochMetric.trial_id, func.max(EpochMetric.epoch).label("epoch"))
        .join(Trial)
        .where(Trial.sweep_id == sweep.id, Trial.status.not_in(NOT_BEST))
        .group_by(EpochMetric.trial_id)
        .subquery()
    )
    stmt = select(EpochMetric).join(
        last, (EpochMetric.trial_id == last.c.trial_id) & (EpochMetric.epoch == last.c.epoch)
    )
    best: Best | None = None
    sign = 1.0 if goal == "maximize" else -1.0
    for row in session.scalars(stmt.options(selectinload(EpochMetric.trial))):
        value = row.metrics.get(metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if best is None or sign * value > sign * best.value:
            best = Best(trial=row.trial, value=float(value), epoch=row.epoch)
    return best


def cancelling_since(session: Session, before: datetime) -> list[Sweep]:
    """Sweeps whose cancellation was requested before ``before`` and has not finished."""
    stmt = select(Sweep).where(Sweep.status == "cancelling", Sweep.cancel_requested_at <= before)
    return list(session.scalars(stmt))
