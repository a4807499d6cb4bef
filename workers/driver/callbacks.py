"""Tune's callbacks of a sweep: pack events into its trials' progress, cancel polls, flushes.

Every Tune trial is a pack (:mod:`workers.results`); everywhere a user looks each of its trials
is a trial of its own. :class:`ProgressCallback` turns a pack's start, results, retries and end
into its trials' :class:`~workers.driver.progress.SweepProgress` events; :class:`CancelStopper`
polls the sink for a cancel and flushes the queued writes before Tune may snapshot. Tune pickles
its run configuration, so both hold only the sweep's uid and find the live sweep in
:data:`workers.driver.live.LIVE`. Why each flush is where it is: ARCHITECTURE.md, "Resume".
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from workers.driver.live import LIVE
from workers.driver.progress import SweepProgress
from workers.errors import SinkUnavailableError
from workers.events import FINAL_TRIAL_STATUSES, SAMPLES_ARTIFACT
from workers.results import REPORTS, SAMPLES, STATES, is_pack, trials_of

log = logging.getLogger(__name__)
CANCEL_POLL_S = 1.0
SNAPSHOT_PERIOD_S = 2.0
"""How often Tune snapshots the experiment state (the most training a killed driver loses)."""
BOARD_CHECK_S = 1.0
"""How often the driver asks whether its stopping board restarted (and must be seeded)."""
SNAPSHOT_MARGIN_S = 0.1
"""``stop_all`` flushes the writes this long before a snapshot is due, and from then on.
``snapshot_at`` is taken in ``get_state()``, inside Tune's save, so by our clock a snapshot is
due no later than by Tune's; the margin covers the moments between ``stop_all`` and Tune's look
at its clock in the same step."""


class ProgressCallback(tune.Callback):
    """Forwards Tune's pack events to the sweep's trials (see the module docstring)."""

    def __init__(self, sweep_uid: str) -> None:
        self.sweep_uid = sweep_uid
        self._board_checked = 0.0

    @property
    def progress(self) -> SweepProgress:
        return LIVE[self.sweep_uid].progress

    def _seen(self, pack: Trial) -> list[int]:
        """The numbers of the pack's trials, each with a record."""
        if not is_pack(pack.config):
            return []  # not ours (refused before fit() for a sweep of an earlier driver)
        numbers = []
        for t in trials_of(pack.config):
            self.progress.seen(t.number, t.params, pack.trial_id)
            numbers.append(t.number)
        return numbers

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        for pack in trials:
            self._seen(pack)
        if time.monotonic() - self._board_checked >= BOARD_CHECK_S:
            self._board_checked = time.monotonic()
            self._seed_restarted_board()

    def _seed_restarted_board(self) -> None:
        """Seed the stopping board again when Ray restarted it (it then stops nothing)."""
        board = LIVE[self.sweep_uid].board
        if board is None:
            return
        try:
            seeded = ray.get(board.is_seeded.remote(), timeout=BOARD_CHECK_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return  # restarting: asked again next time
        if not seeded:
            log.warning("sweep %s: the stopping board restarted; seeding it", self.sweep_uid)
            board.seed.remote(
                self.progress.curves(), complete=True, stopped=self.progress.stopped()
            )

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        for number in self._seen(trial):
            rec = self.progress.trials[number]
            self.progress.started(number, rec.params, trial.num_failures + 1, trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        why = _error_line(trial) or "the pack's worker failed"
        message = f"{why}; retrying from the last checkpoint"
        for number in self._seen(trial):
            self.progress.restarting(number, trial.num_failures + 1, message)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result, **info):
        """A pack's epoch: pictures, then each trial's metrics, then who ended. Tune keeps the
        result it hands callbacks as the pack's last (changes in place are allowed): the
        pictures go to the sink only, never into Tune's experiment state."""
        for number, picture in (result.pop(SAMPLES, None) or {}).items():
            self.progress.artifact(int(number), SAMPLES_ARTIFACT, picture)
        for number, metrics in result.get(REPORTS, {}).items():
            self.progress.result(int(number), metrics)
        self._ends(result)

    def _ends(self, result: dict[str, Any]) -> None:
        for number, state in result.get(STATES, {}).items():
            if state.get("status") in FINAL_TRIAL_STATUSES:
                self.progress.end(int(number), state["status"], state.get("message", ""))

    def on_trial_save(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        _forget_samples(trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._finished(trial)

    def _finished(self, pack: Trial) -> None:
        """The pack ended without error: trials end as its last result says, or by epochs."""
        self._ends(pack.run_metadata.last_result or {})
        for number in self._seen(pack):
            self.progress.finished(number)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        attempts = trial.num_failures
        message = f"{_error_line(trial) or 'the pack failed'} (after {attempts} attempts)"
        for number in self._seen(trial):
            self.progress.end(number, "failed", message)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for pack in trials:
            # A restored experiment whose packs had all ended runs no step: their trials are
            # seen here first; stop_all ends packs without on_trial_complete.
            self._seen(pack)
            if pack.status == Trial.TERMINATED:
                self._finished(pack)

    def get_state(self) -> None:
        """Called as Tune snapshots the experiment: make every queued write first.

        No state of its own (the sink and MLflow hold it), so Tune saves no callback file.
        """
        self.progress.flush()
        self.progress.snapshot_at = time.monotonic()
        return None


class CancelStopper(tune.Stopper):
    """Stops the whole experiment once the sink reports a cancel request (polled ~1/s).

    Also the last hook Tune calls before it snapshots the experiment state: it flushes the
    sweep's progress writes first (see the module docstring). A poll the sink cannot answer
    counts as no cancel, for the sweep's ``patience_s``; then the driver gives up.
    """

    def __init__(self, sweep_uid: str) -> None:
        self.sweep_uid = sweep_uid
        self._last_poll = 0.0
        self._last_answer = time.monotonic()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        live = LIVE.get(self.sweep_uid)
        if live is None:
            return False
        progress = live.progress
        since = time.monotonic() - progress.snapshot_at
        if since >= SNAPSHOT_PERIOD_S - SNAPSHOT_MARGIN_S:  # Tune may snapshot next (docstring)
            progress.flush()
        if progress.cancelled:
            return True
        if time.monotonic() - self._last_poll >= CANCEL_POLL_S:
            self._last_poll = time.monotonic()
            progress.cancelled = self._poll(progress)
        return progress.cancelled

    def _poll(self, progress: SweepProgress) -> bool:
        try:
            cancelled = bool(progress.sink.cancel_requested())
        except SinkUnavailableError:
            if time.monotonic() - self._last_answer > progress.patience_s:
                raise
            log.warning("sweep %s: cannot poll for a cancel; trying again", self.sweep_uid)
            return False
        self._last_answer = time.monotonic()
        return cancelled


def _forget_samples(trial: Trial) -> None:
    """Drop the picture from the metrics Tune keeps with the trial's newest checkpoint.

    The trial's worker hands Tune its whole first result again with that checkpoint, and Tune
    keeps every checkpoint's metrics in the experiment state it snapshots every few seconds.
    Tune's API has no other way to them, so a Tune without these attributes keeps the picture
    there (tens of KB per trial), which costs space, never correctness.
    """
    manager = getattr(trial.run_metadata, "checkpoint_manager", None)
    latest = getattr(manager, "latest_checkpoint_result", None)
    metrics = getattr(latest, "metrics", None)
    if isinstance(metrics, dict) and metrics.pop(SAMPLES, None) is not None:
        trial.invalidate_json_state()
        trial.run_metadata.invalidate_cache()


def _error_line(trial: Trial) -> str:
    """The last line of the trial's error (the exception itself), or ''."""
    text = trial.get_error()
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else ""
