"""The database-backed :class:`workers.events.SweepSink` that a sweep job's driver reports to.

Each call is its own short transaction, or all the calls of a :meth:`DatabaseSink.batch` block
share one, so the API (another process) sees progress as it happens, and a crash loses at most
the transaction in flight. Every call is idempotent, as the sink contract requires: a resumed
driver may repeat what it sent before. A database that cannot be reached (or a transaction
that lost its connection) raises :class:`~workers.errors.SinkUnavailableError`, which the
driver retries.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.errors import StorageError
from service.store.db import session_scope
from workers.errors import SinkUnavailableError
from workers.events import SweepStatus, TrialOutcome, TrialUpdate

OUTAGES = (OperationalError, DisconnectionError, PoolTimeoutError)
"""Database errors that pass: the server is down, restarting, unreachable or busy."""


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` (or the database error it wraps) says the database is unreachable for
    now, as opposed to a statement that will fail again."""
    cause = err.__cause__ if isinstance(err, StorageError) else err
    return isinstance(cause, OUTAGES) or (
        isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)
    )


@contextlib.contextmanager
def _outage_is_unavailable() -> Iterator[None]:
    try:
        yield
    except (StorageError, DBAPIError, DisconnectionError, PoolTimeoutError) as err:
        if is_outage(err):
            raise SinkUnavailableError(f"the database is unreachable: {err}") from err
        raise


class DatabaseSink:
    """Writes one sweep's progress to the service's database (implements ``SweepSink``)."""

    def __init__(self, factory: sessionmaker[Session], sweep_id: int) -> None:
        self._factory = factory
        self.sweep_id = sweep_id
        self._batch = threading.local()  # the session of this thread's open batch, if any

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The reports this thread makes in the block share one transaction."""
        if getattr(self._batch, "session", None) is not None:  # nested: the outer one holds
            yield
            return
        with _outage_is_unavailable(), session_scope(self._factory) as session:
            self._batch.session = session
            try:
                yield
            finally:
                self._batch.session = None

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        session = getattr(self._batch, "session", None)
        if session is not None:
            yield session
        else:
            with _outage_is_unavailable(), session_scope(self._factory) as session:
                yield session

    def sweep_started(self, experiment_path: str) -> None:
        """Mark the sweep running (unless cancelling) and remember its Tune experiment.

        Open trials stay open: a sweep resumed, or started over, runs the same numbered
        trials again, and they report to the same rows."""
        with self._session() as session:
            store.mark_started(session, self.sweep_id, experiment_path)

    def trials(self, metric: str) -> list[TrialOutcome]:
        """Every trial stored so far, in number order, with its curve of ``metric``."""
        with self._session() as session:
            return store.trial_outcomes(session, self.sweep_id, metric)

    def trial_updated(self, update: TrialUpdate) -> None:
        """Create or update the trial's row."""
        with self._session() as session:
            store.upsert_trial(session, self.sweep_id, update)

    def epoch_reported(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        """Store the epoch's metrics (a re-report after a resume keeps the first)."""
        with self._session() as session:
            store.record_epoch(session, self.sweep_id, number, epoch, metrics)

    def artifact_reported(self, number: int, path: str, content: bytes) -> None:
        """Store a file of the trial's MLflow run (a repeat keeps the first)."""
        with self._session() as session:
            store.record_artifact(session, self.sweep_id, number, path, content)

    def sweep_ended(self, status: SweepStatus, message: str, best: int | None) -> None:
        """Give the sweep its final status and its best trial (trial ``best``'s key); trials
        still open end with it."""
        with self._session() as session:
            trial_status = "cancelled" if status == "cancelled" else "failed"
            closing = message or f"sweep {status}"
            store.close_open_trials(session, self.sweep_id, trial_status, closing)
            store.finish_sweep(session, self.sweep_id, status, message, best)

    def cancel_requested(self) -> bool:
        """Whether the sweep is being (or has been) cancelled."""
        with self._session() as session:
            status = store.sweep_status(session, self.sweep_id)
        return status in ("cancelling", "cancelled")
