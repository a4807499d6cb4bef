"""Tune's callbacks of a sweep: trial events into its progress, cancel polls, flushes.

:class:`ProgressCallback` forwards Tune's trial events to the sweep's
:class:`~workers.driver.progress.SweepProgress` (a pack's through
:class:`~workers.driver.members.PackEvents`); :class:`CancelStopper` polls the sink for a
cancel and flushes the queued writes before Tune may snapshot. Tune pickles its run
configuration, so both hold only the sweep's uid and find the live objects in :data:`_LIVE`
and :data:`_PACKS`, which :func:`workers.driver.sweep.run_sweep` fills. Why each flush is where
it is: ARCHITECTURE.md, "Resume".
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from workers.driver.members import PackEvents
from workers.driver.progress import SweepProgress
from workers.errors import SinkUnavailableError
from workers.events import SAMPLES_ARTIFACT
from workers.packing import is_pack
from workers.trial.trainable import DIVERGED, INVALID, SAMPLES

log = logging.getLogger(__name__)
CANCEL_POLL_S = 1.0
SNAPSHOT_PERIOD_S = 2.0
"""How often Tune snapshots the experiment state (the most training a killed driver loses)."""
SNAPSHOT_MARGIN_S = 0.1
"""``stop_all`` flushes the writes this long before a snapshot is due, and from then on.
``snapshot_at`` is taken in ``get_state()``, inside Tune's save, so by our clock a snapshot is
due no later than by Tune's; the margin covers the moments between ``stop_all`` and Tune's look
at its clock in the same step."""
_LIVE: dict[str, SweepProgress] = {}
"""Sweep uid -> the progress of the sweep this process is driving."""
_PACKS: dict[str, PackEvents] = {}
"""Sweep uid -> the member events of the packed sweep this process is driving."""


class ProgressCallback(tune.Callback):
    """Forwards Tune's trial events to the sweep's :class:`SweepProgress`."""

    def __init__(self, sweep_uid: str) -> None:
        self.sweep_uid = sweep_uid

    @property
    def progress(self) -> SweepProgress:
        return _LIVE[self.sweep_uid]

    def _pack(self, trial: Trial) -> PackEvents | None:
        """The member events of ``trial`` when it is a pack, else None."""
        return _PACKS[self.sweep_uid] if is_pack(trial.config) else None

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        for trial in trials:  # a restored trial brings the last result it reported
            last = trial.run_metadata.last_result
            if (pack := self._pack(trial)) is not None:
                pack.seen(trial, last)
            else:
                self.progress.seen(trial.trial_id, trial.config, last)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        attempt = trial.num_failures + 1
        if (pack := self._pack(trial)) is not None:
            pack.started(trial, attempt)
        else:
            self.progress.started(trial.trial_id, trial.config, attempt=attempt)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        why = _error_line(trial) or "the trial's worker failed"
        message = f"{why}; retrying from the last checkpoint"
        if (pack := self._pack(trial)) is not None:
            pack.restarting(trial, trial.num_failures + 1, message)
        else:
            self.progress.restarting(trial.trial_id, trial.num_failures + 1, message)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result, **info):
        # Tune hands callbacks the result it then keeps as the trial's last (it allows changes
        # in place): pictures go to the sink only, never into Tune's experiment state.
        if (pack := self._pack(trial)) is not None:
            pack.result(trial, result)
            return
        picture = result.pop(SAMPLES, None)
        if picture is not None:
            self.progress.artifact(trial.trial_id, SAMPLES_ARTIFACT, picture)
        self.progress.result(trial.trial_id, result)

    def on_trial_save(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        _forget_samples(trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        if (pack := self._pack(trial)) is not None:
            pack.finished(trial)
        else:
            self.progress.finished(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        attempts = trial.num_failures
        message = f"{_error_line(trial) or 'the trial failed'} (after {attempts} attempts)"
        if (pack := self._pack(trial)) is not None:
            pack.failed(trial, message)
        else:
            self.progress.end(trial.trial_id, "failed", message)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for trial in trials:
            # A restored experiment whose trials had all ended runs no step: they are seen
            # here first, or the resumed sweep would count no trial at all.
            last = trial.run_metadata.last_result
            if (pack := self._pack(trial)) is not None:
                pack.seen(trial, last)
                if trial.status == Trial.TERMINATED:
                    pack.finished(trial)
                continue
            self.progress.seen(trial.trial_id, trial.config, last)
            if trial.status == Trial.TERMINATED:  # stop_all ends trials without on_trial_complete
                if last and (last.get(DIVERGED) or last.get(INVALID)):
                    self.progress.result(trial.trial_id, last)  # ends it diverged or failed
                self.progress.finished(trial.trial_id)

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
        progress = _LIVE.get(self.sweep_uid)
        if progress is None:
            return False
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
