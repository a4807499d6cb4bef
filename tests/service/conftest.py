"""PostgreSQL for the service's tests: the server on 127.0.0.1:5432 and fresh databases on it.

Every database a test session creates is named ``sweeps_test_<session>_<n>`` with a random
``<session>``, so parallel runs on the same server never collide, and each is dropped at the end.
The server is a requirement of the suite, not an option: when it cannot be reached the tests
marked ``postgres`` fail with how to fix it (or deselect them with ``-m "not postgres"``).
``SWEEPS_TEST_PG_HOST``, ``_PORT`` and ``_USER`` point the tests at another server.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.orm import Session, sessionmaker

from service.store.db import init_db, make_engine, make_session_factory


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    host: str
    port: int
    user: str
    maintenance_db: str = "postgres"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        """An autocommit connection to the maintenance database (CREATE/DROP DATABASE)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.maintenance_db,
            autocommit=True,
            connect_timeout=5,
        )


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """The test PostgreSQL server, checked reachable once per session."""
    server = PgServer(
        host=os.environ.get("SWEEPS_TEST_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("SWEEPS_TEST_PG_PORT", "5432")),
        user=os.environ.get("SWEEPS_TEST_PG_USER", "postgres"),
    )
    try:
        server.admin().close()
    except psycopg.OperationalError as err:
        pytest.fail(
            f"PostgreSQL is not reachable as {server.user}@{server.host}:{server.port} ({err}); "
            "start it, set SWEEPS_TEST_PG_HOST/_PORT/_USER, or deselect with -m 'not postgres'"
        )
    return server


@pytest.fixture(scope="session")
def pg_database_factory(pg_server: PgServer) -> Iterator[Callable[[], str]]:
    """Creates an empty database per call and returns its URL; all are dropped at the end."""
    prefix = f"sweeps_test_{secrets.token_hex(4)}"
    counter = itertools.count()
    created: list[str] = []

    def create() -> str:
        name = f"{prefix}_{next(counter)}"
        with pg_server.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return pg_server.url(name)

    yield create
    with pg_server.admin() as conn:
        for name in created:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def pg_database_url(pg_database_factory: Callable[[], str]) -> str:
    """The URL of a fresh, empty PostgreSQL database for one test."""
    return pg_database_factory()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database on each backend the service supports: a SQLite file, or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'sweeps.db'}"
    factory: Callable[[], str] = request.getfixturevalue("pg_database_factory")
    return factory()


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated, empty database, on each backend (see ``database_url``)."""
    engine = make_engine(database_url)
    init_db(engine)
    yield make_session_factory(engine)
    engine.dispose()
