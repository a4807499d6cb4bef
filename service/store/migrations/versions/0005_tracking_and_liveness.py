"""Tracking delivered from the database, and the driver's heartbeat.

``mlflow_runs`` records what MLflow has been told of each run; trials keep their MLflow run name
and configuration; sweeps get the driver's heartbeat, whether MLflow has everything, and the
last delivery error. Sweeps already final are marked delivered: their runs were logged before.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mlflow_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("create_attempts", sa.Integer(), nullable=False),
        sa.Column("params_sent", sa.Boolean(), nullable=False),
        sa.Column("logged_step", sa.Integer(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name=op.f("fk_mlflow_runs_sweep_id_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mlflow_runs")),
        sa.UniqueConstraint("sweep_id", "key", name=op.f("uq_mlflow_runs_sweep_id_key")),
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("mlflow_done", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("mlflow_error", sa.Text(), nullable=False, server_default=""))
        batch_op.create_index(batch_op.f("ix_sweeps_mlflow_done"), ["mlflow_done"], unique=False)
    op.execute(
        "UPDATE sweeps SET mlflow_done = true WHERE status IN ('completed', 'failed', 'cancelled')"
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.alter_column("mlflow_done", server_default=None)
        batch_op.alter_column("mlflow_error", server_default=None)
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("run_name", sa.String(length=500), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("config", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.alter_column("run_name", server_default=None)
        batch_op.alter_column("config", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_column("config")
        batch_op.drop_column("run_name")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeps_mlflow_done"))
        batch_op.drop_column("mlflow_error")
        batch_op.drop_column("mlflow_done")
        batch_op.drop_column("heartbeat_at")
    op.drop_table("mlflow_runs")
