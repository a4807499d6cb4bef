"""Trial rows and their per-epoch metrics: upserts from the driver, pages, the best trial.

Every function works inside the caller's session. A trial is identified by its number in its
sweep; its row's ``key`` (:func:`workers.events.trial_key`) names its MLflow run. A final trial
status is never replaced; an epoch re-reported after a resume keeps its first report; the best
trial is chosen by :func:`workers.events.best_number`, the driver's rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, selectinload

from service.errors import TrialNotFoundError
from service.store.db import affected
from service.store.models import EpochMetric, Sweep, Trial, TrialArtifact, utcnow
from workers.events import (
    FINAL_TRIAL_STATUSES,
    TrialOutcome,
    TrialStatus,
    TrialUpdate,
    best_number,
    finite_metrics,
    trial_key,
)


def close_open_trials(session: Session, sweep_id: int, status: str, message: str) -> int:
    """Give every trial without a final status ``status``; returns how many changed."""
    assert status in FINAL_TRIAL_STATUSES, status
    changed = affected(
        session,
        update(Trial)
        .where(Trial.sweep_id == sweep_id, Trial.status.not_in(FINAL_TRIAL_STATUSES))
        .values(status=status, message=message, ended_at=utcnow())
        .execution_options(synchronize_session="fetch"),
    )
    return changed


def upsert_trial(session: Session, sweep_id: int, update_: TrialUpdate) -> None:
    """Create or update a trial from the driver's report; a final status is never replaced
    (the update is compare-and-set on the trial's status)."""
    trial_id = _trial(session, sweep_id, update_.number).id
    values: dict[str, Any] = {
        "status": update_.status,
        "attempts": case((Trial.attempts < update_.attempt, update_.attempt), else_=Trial.attempts),
    }
    fields = ("params", "run_name", "config", "message", "pack")
    values |= {name: getattr(update_, name) for name in fields if getattr(update_, name)}
    if update_.status in FINAL_TRIAL_STATUSES:
        values["ended_at"] = utcnow()
    session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.status.not_in(FINAL_TRIAL_STATUSES))
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )


def set_trial_run(session: Session, sweep_id: int, key: str, run_id: str) -> None:
    """Remember the MLflow run of the sweep's trial ``key``."""
    session.execute(
        update(Trial)
        .where(Trial.sweep_id == sweep_id, Trial.key == key)
        .values(mlflow_run_id=run_id)
        .execution_options(synchronize_session="fetch")
    )


def record_epoch(
    session: Session, sweep_id: int, number: int, epoch: int, metrics: dict[str, Any]
) -> EpochMetric:
    """Store one epoch's finite metrics, moving the trial's ``updated_at`` (the sweep's
    version: :func:`~service.store.sweeps.sweep_version`); an epoch reported again (a trial
    resumed from an earlier checkpoint re-runs it) keeps its first report, as MLflow keeps a
    step's first value, so the two never disagree."""
    trial = _trial(session, sweep_id, number)
    row = session.scalar(
        select(EpochMetric).where(EpochMetric.trial_id == trial.id, EpochMetric.epoch == epoch)
    )
    if row is None:
        row = EpochMetric(trial_id=trial.id, epoch=epoch, metrics=finite_metrics(metrics))
        session.add(row)
        trial.updated_at = utcnow()
        session.flush()
    return row


def record_artifact(
    session: Session, sweep_id: int, number: int, path: str, content: bytes
) -> None:
    """Store a file of the trial's MLflow run at ``path``; one sent again (a trial restarted
    from scratch renders its picture again) keeps the first."""
    trial = _trial(session, sweep_id, number)
    of_trial = (TrialArtifact.trial_id == trial.id, TrialArtifact.path == path)
    if session.scalar(select(TrialArtifact.id).where(*of_trial)) is None:
        session.add(TrialArtifact(trial_id=trial.id, path=path, content=content, sent=False))
        session.flush()


def _trial(session: Session, sweep_id: int, number: int) -> Trial:
    """The sweep's trial ``number``, created (keyed :func:`~workers.events.trial_key`) if new."""
    assert number >= 1, number
    stmt = select(Trial).where(Trial.sweep_id == sweep_id, Trial.number == number)
    trial = session.scalar(stmt)
    if trial is None:
        trial = Trial(sweep_id=sweep_id, number=number, key=trial_key(number))
        session.add(trial)
        session.flush()
    return trial


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


def trial_outcomes(session: Session, sweep_id: int, metric: str) -> list[TrialOutcome]:
    """Every trial of the sweep in number order, with its last stored epoch and its curve of
    ``metric`` (the epochs where that metric is stored: a stored metric is finite), in two
    queries whatever the number of trials."""
    trials = session.execute(
        select(Trial.id, Trial.number, Trial.params, Trial.status)
        .where(Trial.sweep_id == sweep_id)
        .order_by(Trial.number)
    ).all()
    epochs = session.execute(
        select(EpochMetric.trial_id, EpochMetric.epoch, EpochMetric.metrics)
        .join(Trial)
        .where(Trial.sweep_id == sweep_id)
        .order_by(EpochMetric.trial_id, EpochMetric.epoch)
    ).all()
    last: dict[int, int] = {}
    curves: dict[int, dict[int, float]] = {}
    for trial_id, epoch, metrics in epochs:
        last[trial_id] = epoch
        if value := finite_metrics(metrics, [metric]):
            curves.setdefault(trial_id, {})[epoch] = value[metric]
    return [
        TrialOutcome(
            number=number,
            params=params,
            status=cast(TrialStatus, status),
            epoch=last.get(trial_id, 0),
            curve=curves.get(trial_id, {}),
        )
        for trial_id, number, params, status in trials
    ]


@dataclass(frozen=True)
class Best:
    """The best trial so far and its metric value at its last reported epoch."""

    trial: Trial
    value: float
    epoch: int


def best_trial(session: Session, sweep: Sweep, metric: str, goal: str) -> Best | None:
    """The best trial by ``metric`` at its last stored epoch, chosen by
    :func:`workers.events.best_number` (never a diverged or failed trial; a tie goes to the
    lowest number), as the driver chooses it; None when no trial counts."""
    latest = (
        select(EpochMetric.trial_id, func.max(EpochMetric.epoch).label("epoch"))
        .join(Trial)
        .where(Trial.sweep_id == sweep.id)
        .group_by(EpochMetric.trial_id)
        .subquery()
    )
    stmt = select(EpochMetric).join(
        latest,
        (EpochMetric.trial_id == latest.c.trial_id) & (EpochMetric.epoch == latest.c.epoch),
    )
    rows = session.scalars(stmt.options(selectinload(EpochMetric.trial)))
    last = {row.trial.number: row for row in rows}
    value = {n: finite_metrics(row.metrics, [metric]).get(metric) for n, row in last.items()}
    mode: Literal["max", "min"] = "max" if goal == "maximize" else "min"
    number = best_number(((n, row.trial.status, value[n]) for n, row in last.items()), mode)
    if number is None:
        return None
    best_value = value[number]
    assert best_value is not None  # best_number chooses among finite values only
    return Best(trial=last[number].trial, value=best_value, epoch=last[number].epoch)
