"""The database engine, schema set-up and the one transactional session scope.

SQLite (the default) runs in WAL mode with a busy timeout, because a sweep's job process writes
its progress while the API reads and writes. PostgreSQL is used through ``postgresql+psycopg://``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from service.errors import StorageError

log = logging.getLogger(__name__)
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS = "service.store:migrations"
MIGRATION_LOCK = 0x7377_6565_7073  # pg_advisory_xact_lock key: b"sweeps"


PG_CONNECT_TIMEOUT_S = 5
"""How long a PostgreSQL connection attempt may take before it fails (a server gone silent)."""


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite gets its directory, WAL and a busy timeout,
    PostgreSQL a connect timeout and a liveness check of pooled connections."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S}
    )


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )
    if engine.url.database and engine.url.database != ":memory:":
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def init_db(engine: Engine) -> None:
    """Bring the schema up to date by applying the Alembic migrations (``migrations/``).

    On PostgreSQL concurrent callers (several API replicas starting) queue on an advisory lock,
    and the whole upgrade is one transaction.

    Raises:
        StorageError: the database is unreachable, predates migrations, or a migration failed.
    """
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            _refuse_unversioned_schema(conn)
            command.upgrade(alembic_config(conn), "head")
    except SQLAlchemyError as err:
        raise StorageError(f"cannot migrate the database schema: {err}") from err


class Schema:
    """The API's view of its database schema: brought up to date at start-up, or, while the
    database cannot be reached, by a background thread that keeps trying, so the API starts
    (and answers ``/healthz``) whatever the database does.

    ``ready`` is set once the schema is up to date; ``error`` says why it is not yet.
    """

    def __init__(self, engine: Engine, retry_s: float = 2.0) -> None:
        self.engine = engine
        self.retry_s = retry_s
        self.ready = threading.Event()
        self.error = "the schema has not been checked yet"
        self._on_ready: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Migrate now; when that fails, keep trying on a thread. ``on_ready`` runs once the
        schema is up to date (at once, or on that thread)."""
        self._on_ready.append(on_ready)
        if self._try():
            return
        log.warning(
            "the database is not ready; retrying every %.0f s: %s", self.retry_s, self.error
        )
        self._thread = threading.Thread(target=self._keep_trying, name="schema", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop trying (shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _keep_trying(self) -> None:
        while not self._stop.wait(self.retry_s):
            if self._try():
                log.info("the database is ready")
                return

    def _try(self) -> bool:
        try:
            init_db(self.engine)
        except StorageError as err:
            self.error = str(err)
            return False
        self.error = ""
        self.ready.set()
        for callback in self._on_ready:
            callback()
        return True


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the service's migrations, on ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def _refuse_unversioned_schema(conn: Connection) -> None:
    tables = set(inspect(conn).get_table_names())
    if "sweeps" in tables and "alembic_version" not in tables:
        raise StorageError(
            f"the database {conn.engine.url.render_as_string()} has the service's tables but no "
            "migration history (made before migrations existed); delete it, or mark it as the "
            "initial revision with `alembic stamp 0001` if its schema matches"
        )


def affected(session: Session, statement: Executable) -> int:
    """Run an ``UPDATE`` or ``DELETE`` in ``session``; how many rows it changed."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (responses are built after it)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error.

    Raises:
        StorageError: wrapping any ``SQLAlchemyError``; other errors pass through unchanged.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as err:
        session.rollback()
        raise StorageError(f"database error: {err}") from err
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
