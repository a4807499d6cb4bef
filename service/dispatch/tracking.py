"""The tracking sender: a thread of the API process that delivers every sweep to MLflow.

What MLflow must hold is already in the database (sweeps, trials with their run names and
configurations, epochs, statuses); for every sweep not yet fully delivered the sender brings
MLflow up to date, run by run and in order, recording each accepted request in ``mlflow_runs``
(:mod:`service.store.tracking`), so that a crash repeats at most one request and repeats are
harmless. A sweep whose delivery fails waits a capped exponential backoff of its own; while any
waits, MLflow is asked one cheap question every :data:`PROBE_S`, and its first answer ends every
wait. ARCHITECTURE.md ("Tracking") has the order and why each step is safe to repeat.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from math import inf
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.dispatch.loop import Loop
from service.dispatch.parent_plots import PLOTS_EVERY_S, ParentPlots
from service.errors import StorageError
from service.store import artifacts
from service.store import tracking as journal
from service.store.db import session_scope
from service.store.models import EpochMetric, MlflowRun, Sweep, Trial
from workers.errors import TrackingError, TrackingRejectedError
from workers.events import FINAL_SWEEP_STATUSES, FINAL_TRIAL_STATUSES
from workers.tracking import (
    OBJECTIVE,
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
EPOCHS_PER_REQUEST = 80
"""Epochs of one run per ``log_batch`` (at most 9 metrics each, grad_noise and the objective's
copy included: one request of at most 800 metrics)."""
PROBE_S = 2.0
"""While deliveries back off, how often MLflow is asked whether it answers again."""
RUNNING_PASS_S = 2.0
"""The least time between two of the loop's passes over a sweep that is not final. A pass
sends each running trial's new epochs in one request, so a trial of a few seconds goes to
MLflow in one or two requests rather than one per epoch (MLflow trails a running sweep by up
to this); a final sweep is passed over at once."""


class TrackingSender:
    """Delivers the database's sweeps to MLflow on a daemon thread (see the module)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        runs: MlflowRuns,
        *,
        poll_s: float = 0.25,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        plots_every_s: float = PLOTS_EVERY_S,
        running_pass_s: float = RUNNING_PASS_S,
    ) -> None:
        self.factory = factory
        self.runs = runs
        self.plots = ParentPlots(factory, runs, plots_every_s)  # the parent run's pictures
        self.backoff_s = backoff_s
        self.running_pass_s = running_pass_s
        self._passed_at: dict[int, float] = {}  # sweep id -> when the loop last passed it
        self._synced: dict[int, str] = {}  # sweep id -> its version when last fully delivered
        self._rejected = False  # MLflow refused a request of the sweep being delivered
        self._delay: dict[int, float] = {}  # sweep id -> its current backoff
        self._retry_at: dict[int, float] = {}  # sweep id -> when to try it again
        self._probed_at = float("-inf")  # when MLflow was last asked whether it answers
        self.loop = Loop("tracking-sender", poll_s, self.deliver_due)

    def start(self) -> None:
        """Start delivering."""
        self.loop.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the request in flight."""
        self.loop.stop(timeout)

    def deliver_due(self) -> None:
        """One pass: every undelivered sweep whose backoff is over (all of them, as soon as
        MLflow answers again), a sweep that is not final at most every
        :data:`RUNNING_PASS_S`."""
        with session_scope(self.factory) as session:
            sweeps = journal.undelivered_sweeps(session)
        now = time.monotonic()
        if self._retry_at and now - self._probed_at >= PROBE_S:
            self._probed_at = now
            try:
                self.runs.ping()
            except TrackingError:
                pass
            else:
                self._retry_at.clear()
        for sweep_id, final in sweeps:
            if self.loop.stopping.is_set():
                return
            if self._retry_at.get(sweep_id, 0.0) > now:
                continue
            if not final and now - self._passed_at.get(sweep_id, -inf) < self.running_pass_s:
                continue
            self._passed_at[sweep_id] = now
            self._try(sweep_id)
        for gone in self._passed_at.keys() - {sweep_id for sweep_id, _ in sweeps}:
            del self._passed_at[gone]

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
        if self._synced.get(sweep_id) == version and not self.plots.due(sweep_id):
            return
        self._rejected = False
        sweep = self._view(sweep_id)  # read before its trials: final here means they all are
        experiment = sweep.mlflow_experiment_id or self._experiment(sweep)
        parent = self._parent(sweep, experiment)
        with session_scope(self.factory) as session:
            trials = journal.trials_with_runs(session, sweep.id)
        for trial, state, last_epoch in trials:
            self._trial(sweep, experiment, parent, trial, state, last_epoch)
        if sweep.status in FINAL_SWEEP_STATUSES:
            self._close_parent(sweep, parent)
            self._synced.pop(sweep_id, None)
        else:
            self._rejectable(sweep, lambda: self.plots.refresh(sweep, parent, trials))
            self._synced[sweep_id] = version
        if sweep.mlflow_error and not self._rejected:
            self._note(sweep_id, "")  # a complete pass: no error stands

    def _view(self, sweep_id: int) -> Sweep:
        """The sweep's row as it is now (readable after its session: nothing expires)."""
        with session_scope(self.factory) as session:
            return store.get_sweep(session, sweep_id)

    def _experiment(self, sweep: Sweep) -> str:
        experiment = self.runs.experiment(sweep.experiment_name)
        with session_scope(self.factory) as session:
            store.get_sweep(session, sweep.id).mlflow_experiment_id = experiment
        return experiment

    def _parent(self, sweep: Sweep, experiment: str) -> str:
        key = journal.PARENT_KEY
        tags = parent_tags(sweep.uid, str(sweep.spec.get("method", "")))
        run_id = self._run_id(sweep, experiment, key, sweep.name, tags, {ROLE: "sweep"})
        with session_scope(self.factory) as session:
            sent = journal.run_state(session, sweep.id, key).params_sent
        if not sent:
            self._rejectable(
                sweep, lambda: self.runs.log_text(run_id, _spec_text(sweep), SPEC_ARTIFACT)
            )
            self._rejectable(sweep, lambda: self.runs.log(run_id, params=_headline(sweep)))
            self._advance(sweep.id, key, params_sent=True)
        return run_id

    def _trial(
        self,
        sweep: Sweep,
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
        tags = trial_tags(sweep.uid, trial.key, parent, trial.pack)
        run_id = (state.run_id if state else None) or self._run_id(
            sweep, experiment, trial.key, name, tags, {TRIAL_KEY: trial.key}
        )
        step = state.logged_step if state else 0
        with session_scope(self.factory) as session:
            epochs = journal.epochs_after(session, trial.id, step)
            files = artifacts.unsent_artifacts(session, trial.id)  # read after: see _send_files
        self._send_files(sweep, run_id, files)
        params = None if state is not None and state.params_sent else trial.config or trial.params
        for i in range(0, max(len(epochs), 1), EPOCHS_PER_REQUEST):
            chunk = epochs[i : i + EPOCHS_PER_REQUEST]
            last = i + EPOCHS_PER_REQUEST >= len(epochs)
            tags_now = outcome_tags(trial.status, trial.message) if final and last else None
            if chunk or params or tags_now:
                points = _points(chunk, sweep.metric_name)
                request = functools.partial(self.runs.log, run_id, points, params, tags_now)
                self._rejectable(sweep, request)
                self._advance(sweep.id, trial.key, params_sent=True, step=_last_epoch(chunk))
            params = None
        if final:
            self._rejectable(sweep, lambda: self.runs.close(run_id, RUN_STATUS[trial.status]))
            self._advance(sweep.id, trial.key, closed=True)

    def _send_files(self, sweep: Sweep, run_id: str, files: list[tuple[int, str, bytes]]) -> None:
        """Upload the trial's files MLflow lacks, each marked sent once accepted.

        Before the epochs read with them: a trial's file is stored no later than the epoch it
        came with, and read here after the epochs, so a run whose epochs MLflow has (the pass
        skips it then) or that is closed has its files too.
        """
        for file_id, path, content in files:
            self._rejectable(sweep, functools.partial(self.runs.log_file, run_id, content, path))
            with session_scope(self.factory) as session:
                artifacts.mark_sent(session, file_id)

    def _close_parent(self, sweep: Sweep, parent: str) -> None:
        with session_scope(self.factory) as session:
            runs = journal.trials_with_runs(session, sweep.id)
            if any(state is None or not state.closed for _, state, _ in runs):
                return  # a trial run could not be closed this pass; the next one retries
            s = store.get_sweep(session, sweep.id)
            best = store.best_trial(session, s, sweep.metric_name, sweep.metric_goal)
            tags = outcome_tags(sweep.status, sweep.message)
            points: list[Point] = []
            if best is not None:
                tags |= best_tags(best.trial.key, best.trial.params, best.trial.mlflow_run_id)
                ended = int((sweep.ended_at or sweep.updated_at).timestamp() * 1000)
                points = [Point(f"best_{sweep.metric_name}", best.value, ended, 0)]
        # the final pictures, before the close (sent again after a crash before it: harmless)
        self._rejectable(sweep, lambda: self.plots.upload(sweep, parent, runs))
        self._rejectable(sweep, lambda: self.runs.log(parent, points, tags=tags))
        self._rejectable(sweep, lambda: self.runs.close(parent, RUN_STATUS[sweep.status]))
        with session_scope(self.factory) as session:
            journal.delivered(session, sweep.id)
        self.plots.forget(sweep.id)

    def _run_id(
        self,
        sweep: Sweep,
        experiment: str,
        key: str,
        name: str,
        tags: dict[str, str],
        identity: dict[str, str],
    ) -> str:
        """The run's id: known, found (after an attempt that may have made it), or created."""
        with session_scope(self.factory) as session:
            known, tried = journal.start_create(session, sweep.id, key)
        if known is not None:
            return known
        identity = {SWEEP_UID: sweep.uid, **identity}
        found = self.runs.find_run(experiment, identity) if tried else None
        run_id = found or self.runs.create_run(experiment, name, tags)
        with session_scope(self.factory) as session:
            journal.record_run(session, sweep.id, key, run_id)
        return run_id

    def _advance(self, sweep_id: int, key: str, **done: Any) -> None:
        with session_scope(self.factory) as session:
            journal.advance(session, sweep_id, key, **done)

    def _rejectable(self, sweep: Sweep, request: Any) -> None:
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


def _points(epochs: list[EpochMetric], objective: str) -> list[Point]:
    """Each epoch's metrics at ``step=epoch``, stamped with when the epoch was stored, and the
    sweep's metric ``objective`` again under :data:`OBJECTIVE`."""
    points = []
    for e in epochs:
        stamp = int(e.reported_at.timestamp() * 1000)
        points += [Point(name, value, stamp, e.epoch) for name, value in e.metrics.items()]
        if objective in e.metrics:
            points.append(Point(f"{OBJECTIVE}/{objective}", e.metrics[objective], stamp, e.epoch))
    return points


def _last_epoch(epochs: list[EpochMetric]) -> int | None:
    return epochs[-1].epoch if epochs else None


def _spec_text(sweep: Sweep) -> str:
    return json.dumps(sweep.spec, indent=2)


def _headline(sweep: Sweep) -> dict[str, Any]:
    """The parent run's parameters, read from the stored (validated) specification."""
    spec = sweep.spec
    return {
        "sweep.method": spec.get("method"),
        "sweep.metric": sweep.metric_name,
        "sweep.goal": sweep.metric_goal,
        "sweep.num_trials": sweep.planned_trials,
        "sweep.epochs": spec.get("epochs"),
        "sweep.dataset": spec.get("dataset"),
        "sweep.early_stopping": (spec.get("early_stopping") or {}).get("type"),
        "sweep.max_concurrent": spec.get("max_concurrent"),
        "sweep.seed": spec.get("seed"),
    }
