"""The Alembic migrations build exactly the schema of the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from service.errors import StorageError
from service.store.db import alembic_config, init_db, make_engine
from service.store.models import Base
from tests.specs import digits_body
from workers.spec import SweepSpec


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_migrations_have_a_single_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_init_db_builds_the_schema_the_models_describe(engine: Engine) -> None:
    init_db(engine)
    assert _diff(engine) == []


def test_init_db_is_idempotent(engine: Engine) -> None:
    init_db(engine)
    init_db(engine)
    assert _diff(engine) == []


def test_a_schema_the_models_no_longer_match_shows_a_diff(engine: Engine) -> None:
    """The check above can fail: drop an index the models declare and it is reported."""
    init_db(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_sweeps_status")
    assert any("ix_sweeps_status" in repr(change) for change in _diff(engine))


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    init_db(engine)
    assert _diff(engine) == []


def test_init_db_refuses_tables_made_without_migrations(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with pytest.raises(StorageError, match="no migration history"):
        init_db(engine)


@pytest.mark.postgres
def test_concurrent_init_db_calls_all_succeed_on_postgres(pg_database_url: str) -> None:
    """API replicas starting together queue on the advisory lock instead of racing."""
    engine = make_engine(pg_database_url)
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            init_db(engine)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=migrate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _diff(engine) == []
    engine.dispose()


def test_upgrade_fills_the_summary_columns_of_existing_sweeps(engine: Engine) -> None:
    """Sweeps stored before revision 0004 get the trial count and metric their spec gives."""
    grid = SweepSpec.model_validate(
        digits_body(
            {"optim.lr": [0.01, 0.1], "seed": {"distribution": "int_uniform", "min": 0, "max": 2}},
            method="grid",
        )
    )
    random = SweepSpec.model_validate(
        digits_body(
            {"optim.lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}},
            max_trials=7,
            metric={"name": "val_loss", "goal": "minimize"},
        )
    )
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
    with engine.begin() as conn:
        for n, spec in enumerate((grid, random), start=1):
            conn.execute(
                text(
                    "INSERT INTO sweeps (id, uid, name, status, spec, body_hash, resumes, "
                    "experiment_name, message, created_at, updated_at) VALUES (:id, :uid, "
                    "'old', 'completed', :spec, '', 0, 'sweeps/old', '', :now, :now)"
                ),
                {"id": n, "uid": f"uid{n}", "spec": spec.model_dump_json(), "now": "2026-01-01"},
            )
    init_db(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT planned_trials, metric_name, metric_goal FROM sweeps ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [
        (grid.num_trials, "val_accuracy", "maximize"),
        (7, "val_loss", "minimize"),
    ]
    assert grid.num_trials == 6
    assert _diff(engine) == []
