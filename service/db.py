"""The database engine, schema set-up and the one transactional session scope.

SQLite (the default) runs in WAL mode with a busy timeout, because a sweep's job process writes
its progress while the API reads and writes. PostgreSQL is used through ``postgresql+psycopg://``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.errors import StorageError
from service.models import Base

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite gets its directory, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True)


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
    """Bring the schema up to date (create missing tables; Alembic will plug in here)."""
    try:
        Base.metadata.create_all(engine)
    except SQLAlchemyError as err:
        raise StorageError(f"cannot create the schema: {err}") from err


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
