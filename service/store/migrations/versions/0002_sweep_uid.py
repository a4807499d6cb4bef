"""A globally unique ``uid`` per sweep (names its Tune experiment, Ray jobs and MLflow tags).

Integer ids restart with a new database while Ray clusters, Tune storage and MLflow servers
live on; the uid keeps a new sweep 1 from meeting an old sweep 1's state there.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uid", sa.String(length=32), nullable=True))
    bind = op.get_bind()
    for (sweep_id,) in bind.execute(sa.text("SELECT id FROM sweeps")).all():
        bind.execute(
            sa.text("UPDATE sweeps SET uid = :uid WHERE id = :id"),
            {"uid": uuid.uuid4().hex, "id": sweep_id},
        )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.alter_column("uid", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_sweeps_uid"), ["uid"])


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_sweeps_uid"), type_="unique")
        batch_op.drop_column("uid")
