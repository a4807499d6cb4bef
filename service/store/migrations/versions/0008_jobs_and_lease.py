"""The Ray jobs the API submitted (deleted from Ray once done), a final sweep's kept driver log,
and the API's lease on the database.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("driver_log", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "ray_jobs",
        sa.Column("job_id", sa.String(length=100), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_ray_jobs")),
    )
    op.create_index(op.f("ix_ray_jobs_sweep_id"), "ray_jobs", ["sweep_id"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index(op.f("ix_ray_jobs_sweep_id"), table_name="ray_jobs")
    op.drop_table("ray_jobs")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("driver_log")
