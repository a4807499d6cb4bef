"""The tracking sender: a thread of the API process that delivers every sweep to MLflow.

What MLflow must hold is already in the database, written by the sweep jobs: each sweep, its
trials (run name, configuration, status) and their epochs. For every sweep not yet fully
delivered, the sender brings MLflow up to date, run by run and in order: the experiment, the
parent run (created, then its parameters and the spec), each trial's run (created, nested
under the parent; one ``log_batch`` with its configuration, the epochs MLflow lacks and, once
final, its outcome; then closed), and last, once the sweep is final and every trial run closed,
the parent's outcome and best trial, and its close. ``mlflow_runs`` advances only after MLflow
accepted a request, in a short transaction of its own, so a crash repeats at most one request:
a create is preceded by a search when an earlier attempt may have made the run, and metrics
carry the epoch's own timestamp, which MLflow stores once.

A sweep whose delivery fails is tried again after a capped exponential backoff of its own, for
as long as it has something left to deliver; while any sweep waits, MLflow is asked one cheap
question every :data:`PROBE_S`, and its first answer ends every wait. The sweep jobs and the API
never wait for MLflow.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.errors import StorageError
from service.store import tracking as journal
from service.store.db import session_scope
from service.store.models import EpochMetric, MlflowRun, Sweep, Trial
from workers.errors import TrackingError, TrackingRejectedError
from workers.events import FINAL_SWEEP_STATUSES, FINAL_TRIAL_STATUSES
from workers.tracking import (
    ROLE,
    RUN_STATUS,
    SPEC_ARTIFACT,
    SWEEP_UID,
    TRIAL_KEY,
    MlflowRuns,
    Point,
    best_tags,
    outcome_tags,
    parent_tags,
    trial_tags,
)

log = logging.getLogger(__name__)
EPOCHS_PER_REQUEST = 100
"""Epochs of one run per ``log_batch`` (7 metrics each stays under MLflow's 1000)."""
PROBE_S = 2.0
"""While deliveries back off, how often MLflow is asked whether it answers again."""


@dataclass(frozen=True)
class _SweepView:
    """What the sender reads of a sweep, once per pass."""

    id: int
    uid: str
    name: str
    experiment_name: str
    experiment_id: str | None
    status: str
    message: str
    spec: dict[str, Any]
    planned_trials: int
    metric: str
    goal: str
    ended_ms: int

    @property
    def final(self) -> bool:
        return self.status in FINAL_SWEEP_STATUSES


class TrackingSender:
    """Delivers the database's sweeps to MLflow on a daemon thread (see the module)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        runs: MlflowRuns,
        *,
        poll_s: float = 0.25,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.factory = factory
        self.runs = runs
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self._synced: dict[int, str] = {}  # sweep id -> its version when last fully delivered
        self._rejected = False  # MLflow refused a request of the sweep being delivered
        self._delay: dict[int, float] = {}  # sweep id -> its current backoff
        self._retry_at: dict[int, float] = {}  # sweep id -> when to try it again
        self._probed_at = float("-inf")  # when MLflow was last asked whether it answers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracking-sender", daemon=True)

    def start(self) -> None:
        """Start delivering."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the request in flight."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except StorageError as err:  # the database is down: everything waits for it
                log.warning("tracking: cannot read the database: %s", err)
            except Exception:  # the thread must outlive any one failure
                log.exception("tracking: delivery pass failed")
            self._stop.wait(self.poll_s)

    def deliver_due(self) -> None:
        """One pass: every undelivered sweep whose backoff is over (all of them, as soon as
        MLflow answers again)."""
        with session_scope(self.factory) as session:
            ids = journal.undelivered_sweeps(session)
        now = time.monotonic()
        if self._retry_at and now - self._probed_at >= PROBE_S:
            self._probed_at = now
            try:
                self.runs.ping()
            except TrackingError:
                pass
            else:
                self._retry_at.clear()
        for sweep_id in ids:
            if self._stop.is_set():
                return
            if self._retry_at.get(sweep_id, 0.0) <= now:
                self._try(sweep_id)

    def _try(self, sweep_id: int) -> None:
        try:
            self.deliver(sweep_id)
        except TrackingError as err:
            delay = min(self._delay.get(sweep_id, self.backoff_s[0] / 2) * 2, self.backoff_s[1])
            self._delay[sweep_id], self._retry_at[sweep_id] = delay, time.monotonic() + delay
            log.warning("tracking: sweep %s: %s; next try in %.1f s", sweep_id, err, delay)
            self._note(sweep_id, str(err))
            return
        self._delay.pop(sweep_id, None)
        self._retry_at.pop(sweep_id, None)

    def deliver(self, sweep_id: int) -> None:
        """Bring MLflow up to date with sweep ``sweep_id`` (see the module); nothing is asked
        of the database beyond its version while the sweep has not changed since the last
        complete pass.

        Raises:
            TrackingError: MLflow failed a request; what went before it is delivered.
        """
        with session_scope(self.factory) as session:
            version = store.sweep_version(session, sweep_id)
        if self._synced.get(sweep_id) == version:
            return
        self._rejected = False
        sweep = self._view(sweep_id)  # read before its trials: final here means they all are
        experiment = sweep.experiment_id or self._experiment(sweep)
        parent = self._parent(sweep, experiment)
        with session_scope(self.factory) as session:
            trials = journal.trials_with_runs(session, sweep.id)
        for trial, state, last_epoch in trials:
            self._trial(sweep, experiment, parent, trial, state, last_epoch)
        if sweep.final:
            self._close_parent(sweep, parent)
            self._synced.pop(sweep_id, None)
        else:
            self._synced[sweep_id] = version
        if not self._rejected:
            self._note(sweep_id, "")  # a complete pass: no error stands

    def _view(self, sweep_id: int) -> _SweepView:
        with session_scope(self.factory) as session:
            s: Sweep = store.get_sweep(session, sweep_id)
            return _SweepView(
                id=s.id,
                uid=s.uid,
                name=s.name,
                experiment_name=s.experiment_name,
                experiment_id=s.mlflow_experiment_id,
                status=s.status,
                message=s.message,
                spec=s.spec,
                planned_trials=s.planned_trials,
                metric=s.metric_name,
                goal=s.metric_goal,
                ended_ms=int((s.ended_at or s.updated_at).timestamp() * 1000),
            )

    def _experiment(self, sweep: _SweepView) -> str:
        experiment = self.runs.experiment(sweep.experiment_name)
        with session_scope(self.factory) as session:
            store.get_sweep(session, sweep.id).mlflow_experiment_id = experiment
        return experiment

    def _parent(self, sweep: _SweepView, experiment: str) -> str:
        key = journal.PARENT_KEY
        tags = parent_tags(sweep.uid, str(sweep.spec.get("method", "")))
        run_id = self._run_id(sweep, experiment, key, sweep.name, tags, {ROLE: "sweep"})
        state = self._state(sweep.id, key)
        if not state.params_sent:
            self._rejectable(
                sweep, lambda: self.runs.log_text(run_id, _spec_text(sweep), SPEC_ARTIFACT)
            )
            self._rejectable(sweep, lambda: self.runs.log(run_id, params=_headline(sweep)))
            self._advance(sweep.id, key, params_sent=True)
        return run_id

    def _trial(
        self,
        sweep: _SweepView,
        experiment: str,
        parent: str,
        trial: Trial,
        state: MlflowRun | None,
        last_epoch: int,
    ) -> None:
        final = trial.status in FINAL_TRIAL_STATUSES
        if state is not None and (
            state.closed
            or (
                (state.run_id and state.params_sent and last_epoch <= state.logged_step)
                and not final
            )
        ):
            return  # nothing new for this run
        name = trial.run_name or f"{sweep.name} #{trial.number}"
        tags = trial_tags(sweep.uid, trial.key, parent)
        run_id = (state.run_id if state else None) or self._run_id(
            sweep, experiment, trial.key, name, tags, {TRIAL_KEY: trial.key}
        )
        step = state.logged_step if state else 0
        with session_scope(self.factory) as session:
            epochs = journal.epochs_after(session, trial.id, step)
        params = None if state is not None and state.params_sent else trial.config or trial.params
        for i in range(0, max(len(epochs), 1), EPOCHS_PER_REQUEST):
            chunk = epochs[i : i + EPOCHS_PER_REQUEST]
            last = i + EPOCHS_PER_REQUEST >= len(epochs)
            tags_now = outcome_tags(trial.status, trial.message) if final and last else None
            if chunk or params or tags_now:
                request = functools.partial(self.runs.log, run_id, _points(chunk), params, tags_now)
                self._rejectable(sweep, request)
                self._advance(sweep.id, trial.key, params_sent=True, step=_last_epoch(chunk))
            params = None
        if final:
            self._rejectable(sweep, lambda: self.runs.close(run_id, RUN_STATUS[trial.status]))
            self._advance(sweep.id, trial.key, closed=True)

    def _close_parent(self, sweep: _SweepView, parent: str) -> None:
        with session_scope(self.factory) as session:
            runs = journal.trials_with_runs(session, sweep.id)
            if any(state is None or not state.closed for _, state, _ in runs):
                return  # a trial run could not be closed this pass; the next one retries
            s = store.get_sweep(session, sweep.id)
            best = store.best_trial(session, s, sweep.metric, sweep.goal)
            tags = outcome_tags(sweep.status, sweep.message)
            points: list[Point] = []
            if best is not None:
                tags |= best_tags(best.trial.key, best.trial.params, best.trial.mlflow_run_id)
                points = [Point(f"best_{sweep.metric}", best.value, sweep.ended_ms, 0)]
        self._rejectable(sweep, lambda: self.runs.log(parent, points, tags=tags))
        self._rejectable(sweep, lambda: self.runs.close(parent, RUN_STATUS[sweep.status]))
        with session_scope(self.factory) as session:
            journal.run_state(session, sweep.id, journal.PARENT_KEY).closed = True
            store.get_sweep(session, sweep.id).mlflow_done = True

    def _run_id(
        self,
        sweep: _SweepView,
        experiment: str,
        key: str,
        name: str,
        tags: dict[str, str],
        identity: dict[str, str],
    ) -> str:
        """The run's id: known, found (after an attempt that may have made it), or created."""
        with session_scope(self.factory) as session:
            state = journal.run_state(session, sweep.id, key)
            if state.run_id is not None:
                return state.run_id
            tried = state.create_attempts
            state.create_attempts += 1
        found = (
            self.runs.find_run(experiment, {SWEEP_UID: sweep.uid, **identity}) if tried else None
        )
        run_id = found or self.runs.create_run(experiment, name, tags)
        with session_scope(self.factory) as session:
            journal.run_state(session, sweep.id, key).run_id = run_id
            if key == journal.PARENT_KEY:
                store.get_sweep(session, sweep.id).parent_run_id = run_id
            else:
                store.set_trial_run(session, sweep.id, key, run_id)
        return run_id

    def _state(self, sweep_id: int, key: str) -> MlflowRun:
        with session_scope(self.factory) as session:
            return journal.run_state(session, sweep_id, key)

    def _advance(
        self,
        sweep_id: int,
        key: str,
        *,
        params_sent: bool = False,
        step: int | None = None,
        closed: bool = False,
    ) -> None:
        with session_scope(self.factory) as session:
            state = journal.run_state(session, sweep_id, key)
            state.params_sent = state.params_sent or params_sent
            state.logged_step = max(state.logged_step, step or 0)
            state.closed = state.closed or closed

    def _rejectable(self, sweep: _SweepView, request: Any) -> None:
        """Make ``request``; one MLflow refuses for good is noted on the sweep and passed."""
        try:
            request()
        except TrackingRejectedError as err:
            log.warning("tracking: sweep %s: %s; skipped", sweep.id, err)
            self._rejected = True
            self._note(sweep.id, str(err))

    def _note(self, sweep_id: int, error: str) -> None:
        try:
            with session_scope(self.factory) as session:
                journal.set_error(session, sweep_id, error)
        except StorageError:
            log.warning("tracking: cannot note the error of sweep %s", sweep_id)


def _points(epochs: list[EpochMetric]) -> list[Point]:
    """Each epoch's metrics at ``step=epoch``, stamped with when the epoch was stored."""
    return [
        Point(name, value, int(e.reported_at.timestamp() * 1000), e.epoch)
        for e in epochs
        for name, value in e.metrics.items()
    ]


def _last_epoch(epochs: list[EpochMetric]) -> int | None:
    return epochs[-1].epoch if epochs else None


def _spec_text(sweep: _SweepView) -> str:
    return json.dumps(sweep.spec, indent=2)


def _headline(sweep: _SweepView) -> dict[str, Any]:
    """The parent run's parameters, read from the stored (validated) specification."""
    spec = sweep.spec
    return {
        "sweep.method": spec.get("method"),
        "sweep.metric": sweep.metric,
        "sweep.goal": sweep.goal,
        "sweep.num_trials": sweep.planned_trials,
        "sweep.epochs": spec.get("epochs"),
        "sweep.dataset": spec.get("dataset"),
        "sweep.early_stopping": (spec.get("early_stopping") or {}).get("type"),
        "sweep.max_concurrent": spec.get("max_concurrent"),
        "sweep.seed": spec.get("seed"),
    }
