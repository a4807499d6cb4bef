"""The tables: sweeps, their trials, each trial's per-epoch metrics and files for MLflow, what
MLflow has been told of each run, warm standby drivers, the Ray jobs the API submitted and the
API's lease on the database.

Statuses are the strings of :mod:`workers.events`; the spec is stored as the validated JSON of
:class:`workers.spec.SweepSpec`, so a resumed job rebuilds exactly what was accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint and index names (SQLAlchemy's recommended convention)."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of the service's tables."""

    # Named constraints, so a later migration can drop or alter them (SQLite's batch mode
    # cannot touch an unnamed one).
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Sweep(Base):
    """One sweep request and its run state."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=lambda: uuid4().hex)
    """Globally unique: names the Tune experiment, Ray jobs and MLflow tags, so sweeps of a
    reset database never meet an older sweep's state on a long-lived cluster or server."""
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    spec: Mapped[dict[str, Any]]
    """The validated :class:`workers.spec.SweepSpec` as JSON; the sweep job validates it again,
    once. What the API reports of it is stored in the columns below when the sweep is made."""
    planned_trials: Mapped[int]
    metric_name: Mapped[str] = mapped_column(String(64))
    metric_goal: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    ray_job_id: Mapped[str | None] = mapped_column(String(100))
    resumes: Mapped[int] = mapped_column(default=0)
    experiment_name: Mapped[str] = mapped_column(String(200))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    parent_run_id: Mapped[str | None] = mapped_column(String(64))
    experiment_path: Mapped[str | None] = mapped_column(Text)
    best_trial_key: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    """Last sign of life of the sweep's driver (the sweep job beats while it drives)."""
    mlflow_done: Mapped[bool] = mapped_column(default=False, index=True)
    """Everything about the sweep has reached MLflow, its parent run closed last."""
    mlflow_error: Mapped[str] = mapped_column(Text, default="")
    """Why the last delivery to MLflow failed; empty once one succeeds."""
    driver_log: Mapped[str] = mapped_column(Text, default="")
    """The tail of its last driver's log, kept when its Ray jobs are deleted (final sweeps)."""

    trials: Mapped[list[Trial]] = relationship(
        back_populates="sweep", order_by="Trial.number", cascade="all, delete-orphan"
    )


class Trial(Base):
    """One trial of a sweep, identified by its number in the sweep; ``key`` (the number's
    :func:`workers.events.trial_key`) names its MLflow run."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("sweep_id", "key"),
        UniqueConstraint("sweep_id", "number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_name: Mapped[str] = mapped_column(String(500), default="")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The trial's whole configuration (dotted names): its MLflow run's parameters."""
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    pack: Mapped[str] = mapped_column(String(200), default="")
    """The pack (its Tune trial id) the trial trained in; empty when it trained alone."""
    attempts: Mapped[int] = mapped_column(default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None]

    sweep: Mapped[Sweep] = relationship(back_populates="trials")
    epochs: Mapped[list[EpochMetric]] = relationship(
        back_populates="trial", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )


class EpochMetric(Base):
    """The metrics a trial reported at the end of one epoch (the first report; re-runs add none)."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (
        UniqueConstraint("trial_id", "epoch"),
        Index("ix_epoch_metrics_trial", "trial_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    epoch: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    reported_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    trial: Mapped[Trial] = relationship(back_populates="epochs")


class TrialArtifact(Base):
    """A file a trial sent for its MLflow run (its augmentation picture), kept until the
    tracking sender has uploaded it (``sent``); the first one sent for a path stays."""

    __tablename__ = "trial_artifacts"
    __table_args__ = (UniqueConstraint("trial_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(200))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sent: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MlflowRun(Base):
    """What MLflow has been told of one run of a sweep: its parent run (``key`` empty) or a
    trial's (``key`` the trial's). The tracking sender moves these forward, one MLflow request
    at a time, and only after MLflow accepted the request."""

    __tablename__ = "mlflow_runs"
    __table_args__ = (UniqueConstraint("sweep_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[str | None] = mapped_column(String(64))
    create_attempts: Mapped[int] = mapped_column(default=0)
    """Create requests sent; after one that may have made the run, the next looks for it."""
    params_sent: Mapped[bool] = mapped_column(default=False)
    logged_step: Mapped[int] = mapped_column(default=0)
    """The last epoch whose metrics MLflow has."""
    closed: Mapped[bool] = mapped_column(default=False)


class StandbyDriver(Base):
    """A Ray job started ahead of demand that waits, warm, for a sweep to drive.

    The row exists while the job is unclaimed: the dispatcher deletes it in the transaction
    that sets a sweep's ``ray_job_id`` to the job, and the job retires when its row is gone
    and no sweep names it (see :mod:`service.dispatch.standby`).
    """

    __tablename__ = "standby_drivers"

    job_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None]
    """When the job had imported the driver and joined the cluster; None while it starts."""


class RayJob(Base):
    """A Ray job the API submitted (a sweep's driver, a standby or a zygote), recorded before
    its submission; the row goes when the job is deleted from Ray (``sweep_id`` set: once that
    sweep is final and in MLflow; else once the job ended). See :mod:`service.dispatch.janitor`.
    """

    __tablename__ = "ray_jobs"

    job_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    sweep_id: Mapped[int | None] = mapped_column(index=True)
    """The sweep the job drives (a claimed standby's too); None for standbys and zygotes."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """Who runs the API's background work (dispatch monitor, tracking sender, standbys) on this
    database: one API process at a time, renewed while it lives (:mod:`service.store.leases`)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
