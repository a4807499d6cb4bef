"""The database-backed :class:`workers.events.SweepSink` that a sweep job's driver reports to.

Each call is its own short transaction, or all the calls of a :meth:`DatabaseSink.batch` block
share one, so the API (another process) sees progress as it happens, and a crash loses at most
the transaction in flight. Every call is idempotent, as the sink
contract requires: a resumed driver may repeat what it sent before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.store.db import session_scope
from workers.events import SweepStatus, TrialUpdate


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
        with session_scope(self._factory) as session:
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
            with session_scope(self._factory) as session:
                yield session

    def sweep_started(self, mlflow_run_id: str | None, experiment_path: str) -> None:
        """Mark the sweep running and remember its parent MLflow run and Tune experiment."""
        with session_scope(self._factory) as session:
            sweep = store.get_sweep(session, self.sweep_id)
            store.mark_started(session, sweep, mlflow_run_id, experiment_path)

    def trial_updated(self, update: TrialUpdate) -> None:
        """Create or update the trial's row."""
        with self._session() as session:
            store.upsert_trial(session, self.sweep_id, update)

    def epoch_reported(self, trial_key: str, epoch: int, metrics: dict[str, float]) -> None:
        """Upsert the epoch's metrics (a re-report after a resume overwrites)."""
        with self._session() as session:
            store.record_epoch(session, self.sweep_id, trial_key, epoch, metrics)

    def sweep_ended(self, status: SweepStatus, message: str, best_trial_key: str | None) -> None:
        """Give the sweep its final status; trials still open end with it."""
        with session_scope(self._factory) as session:
            sweep = store.get_sweep(session, self.sweep_id)
            trial_status = "cancelled" if status == "cancelled" else "failed"
            store.close_open_trials(session, sweep, trial_status, message or f"sweep {status}")
            store.finish_sweep(session, sweep, status, message, best_trial_key)

    def cancel_requested(self) -> bool:
        """Whether the sweep is being (or has been) cancelled."""
        with session_scope(self._factory) as session:
            status = store.get_sweep(session, self.sweep_id).status
        return status in ("cancelling", "cancelled")
