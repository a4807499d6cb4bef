"""What MLflow has been told of each sweep: the tracking sender's state, and its backlog.

The sweeps, trials and epochs tables are the journal of what MLflow must hold; ``mlflow_runs``
records, per run, how much of it MLflow has accepted. Every function works inside the
caller's session; the sender never keeps one open across a request to MLflow.
"""

from __future__ import annotations

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.orm import Session

from service.store import artifacts
from service.store.models import EpochMetric, MlflowRun, Sweep, Trial
from workers.events import FINAL_SWEEP_STATUSES, FINAL_TRIAL_STATUSES

PARENT_KEY = ""
"""``MlflowRun.key`` of a sweep's parent run (a trial's run has the trial's key)."""


def undelivered_sweeps(session: Session) -> list[tuple[int, bool]]:
    """(id, whether final) of the sweeps MLflow does not have everything of yet, oldest
    first."""
    stmt = select(Sweep.id, Sweep.status).where(Sweep.mlflow_done.is_(False)).order_by(Sweep.id)
    return [(i, status in FINAL_SWEEP_STATUSES) for i, status in session.execute(stmt).all()]


def run_state(session: Session, sweep_id: int, key: str) -> MlflowRun:
    """The delivery state of one run of the sweep, made on first use."""
    row = session.scalar(
        select(MlflowRun).where(MlflowRun.sweep_id == sweep_id, MlflowRun.key == key)
    )
    if row is None:
        row = MlflowRun(
            sweep_id=sweep_id,
            key=key,
            create_attempts=0,
            params_sent=False,
            logged_step=0,
            closed=False,
        )
        session.add(row)
        session.flush()
    return row


def start_create(session: Session, sweep_id: int, key: str) -> tuple[str | None, int]:
    """The run's id if MLflow made it; otherwise how many create requests went before this
    one (which it counts): after one, the run may exist, made by a request whose answer was
    lost."""
    state = run_state(session, sweep_id, key)
    if state.run_id is not None:
        return state.run_id, 0
    state.create_attempts += 1
    return None, state.create_attempts - 1


def record_run(session: Session, sweep_id: int, key: str, run_id: str) -> None:
    """MLflow made (or has) the run: remember it there and where the API links to it."""
    run_state(session, sweep_id, key).run_id = run_id
    if key == PARENT_KEY:
        session.execute(update(Sweep).where(Sweep.id == sweep_id).values(parent_run_id=run_id))
    else:
        session.execute(
            update(Trial)
            .where(Trial.sweep_id == sweep_id, Trial.key == key)
            .values(mlflow_run_id=run_id)
        )


def advance(
    session: Session,
    sweep_id: int,
    key: str,
    *,
    params_sent: bool = False,
    step: int | None = None,
    closed: bool = False,
) -> None:
    """MLflow accepted the run's parameters, its epochs up to ``step``, or its close."""
    state = run_state(session, sweep_id, key)
    state.params_sent = state.params_sent or params_sent
    state.logged_step = max(state.logged_step, step or 0)
    state.closed = state.closed or closed


def delivered(session: Session, sweep_id: int) -> None:
    """MLflow has all of the sweep, its parent run closed last."""
    run_state(session, sweep_id, PARENT_KEY).closed = True
    session.execute(update(Sweep).where(Sweep.id == sweep_id).values(mlflow_done=True))


def trials_with_runs(session: Session, sweep_id: int) -> list[tuple[Trial, MlflowRun | None, int]]:
    """The sweep's trials in number order, each with its run's delivery state (None: none
    yet) and its last stored epoch (0: none)."""
    last_epoch = (
        select(func.coalesce(func.max(EpochMetric.epoch), 0))
        .where(EpochMetric.trial_id == Trial.id)
        .correlate(Trial)
        .scalar_subquery()
    )
    stmt = (
        select(Trial, MlflowRun, last_epoch)
        .outerjoin(MlflowRun, and_(MlflowRun.sweep_id == sweep_id, MlflowRun.key == Trial.key))
        .where(Trial.sweep_id == sweep_id)
        .order_by(Trial.number)
    )
    return [(trial, run, int(n)) for trial, run, n in session.execute(stmt).all()]


def epochs_after(session: Session, trial_id: int, step: int) -> list[EpochMetric]:
    """The trial's epochs after ``step``, in order."""
    stmt = (
        select(EpochMetric)
        .where(EpochMetric.trial_id == trial_id, EpochMetric.epoch > step)
        .order_by(EpochMetric.epoch)
    )
    return list(session.scalars(stmt))


def set_error(session: Session, sweep_id: int, error: str) -> None:
    """Remember why delivering the sweep failed ('' once it succeeds); the version stays."""
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.mlflow_error != error)
        .values(mlflow_error=error[:2000], updated_at=Sweep.updated_at)
        .execution_options(synchronize_session="fetch")
    )


def backlog(session: Session, sweep: Sweep) -> int:
    """How many writes MLflow is missing of the sweep: run creations, configurations, epochs,
    files and closes of its parent and trial runs (0 once everything was delivered)."""
    if sweep.mlflow_done:
        return 0
    final = sweep.status in FINAL_SWEEP_STATUSES
    parent = session.scalar(
        select(MlflowRun).where(MlflowRun.sweep_id == sweep.id, MlflowRun.key == PARENT_KEY)
    )
    missing = (
        int(parent is None or parent.run_id is None)
        + int(parent is None or not parent.params_sent)
        + int(final and (parent is None or not parent.closed))
    )
    joined = and_(MlflowRun.sweep_id == sweep.id, MlflowRun.key == Trial.key)
    step = func.coalesce(MlflowRun.logged_step, 0)
    epochs = (
        select(func.count())
        .where(EpochMetric.trial_id == Trial.id, EpochMetric.epoch > step)
        .correlate(Trial, MlflowRun)
        .scalar_subquery()
    )
    per_trial = (
        case((MlflowRun.run_id.is_(None), 1), else_=0)
        + case((func.coalesce(MlflowRun.params_sent, False).is_(False), 1), else_=0)
        + case(
            (
                and_(
                    Trial.status.in_(FINAL_TRIAL_STATUSES),
                    func.coalesce(MlflowRun.closed, False).is_(False),
                ),
                1,
            ),
            else_=0,
        )
        + epochs
    )
    stmt = (
        select(func.coalesce(func.sum(per_trial), 0))
        .select_from(Trial)
        .outerjoin(MlflowRun, joined)
        .where(Trial.sweep_id == sweep.id)
    )
    return missing + int(session.scalar(stmt) or 0) + artifacts.unsent_count(session, sweep.id)


def sweep_curves(session: Session, sweep_id: int) -> dict[int, list[EpochMetric]]:
    """Every stored epoch of the sweep's trials, by trial id, in epoch order."""
    stmt = (
        select(EpochMetric)
        .join(Trial)
        .where(Trial.sweep_id == sweep_id)
        .order_by(EpochMetric.trial_id, EpochMetric.epoch)
    )
    out: dict[int, list[EpochMetric]] = {}
    for row in session.scalars(stmt):
        out.setdefault(row.trial_id, []).append(row)
    return out
