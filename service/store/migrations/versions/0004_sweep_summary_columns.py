"""What the API reports of a sweep's specification, stored as columns when it is made.

``planned_trials``, ``metric_name`` and ``metric_goal`` spare every read of a sweep from
validating its stored specification again. Existing rows are filled from their stored JSON.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS: dict[str, sa.types.TypeEngine[Any]] = {
    "planned_trials": sa.Integer(),
    "metric_name": sa.String(length=64),
    "metric_goal": sa.String(length=16),
}


def _planned(spec: dict[str, Any]) -> int:
    """The stored (validated) spec's trial count, as ``SweepSpec.num_trials`` counted it when
    this revision was written; a migration never imports the live models."""
    if spec.get("method") != "grid":
        return int(spec.get("max_trials") or 10)

    def points(p: dict[str, Any]) -> int:
        if "values" in p:
            return len(p["values"])
        if p.get("distribution") == "int_uniform":
            return int(p["max"]) - int(p["min"]) + 1
        return 1

    return math.prod(points(p) for p in spec["parameters"].values())


def upgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        for name, type_ in COLUMNS.items():
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    bind = op.get_bind()
    for sweep_id, raw in bind.execute(sa.text("SELECT id, spec FROM sweeps")).all():
        spec = json.loads(raw) if isinstance(raw, str) else raw
        metric = spec.get("metric", {})
        bind.execute(
            sa.text(
                "UPDATE sweeps SET planned_trials = :n, metric_name = :name, metric_goal = :goal "
                "WHERE id = :id"
            ),
            {
                "n": _planned(spec),
                "name": metric.get("name", "val_accuracy"),
                "goal": metric.get("goal", "maximize"),
                "id": sweep_id,
            },
        )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        for name, type_ in COLUMNS.items():
            batch_op.alter_column(name, existing_type=type_, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
