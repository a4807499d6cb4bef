"""A pack's Tune events as its members' trial events.

Tune sees one trial per pack (:mod:`workers.trial.pack`); everywhere a user looks each member
is a trial of its own. :class:`PackEvents` turns the pack trial's start, results, retries and
end into the members' :class:`~workers.driver.progress.SweepProgress` calls, keyed by
:func:`workers.packing.member_key`, and seeds the sweep's stopping board from the curves a
restored pack had reported.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial

from workers.driver.progress import SweepProgress
from workers.events import FINAL_TRIAL_STATUSES, SAMPLES_ARTIFACT
from workers.packing import CURVES, MEMBER_STATES, REPORTS, Member, member_key, members_of
from workers.trial.trainable import EPOCH, SAMPLES


class PackEvents:
    """Member events of the pack trials of one sweep.

    Args:
        progress: the sweep's trial records.
        board: the sweep's stopping board (a Ray actor handle), or None without early
            stopping.
    """

    def __init__(self, progress: SweepProgress, board: Any = None) -> None:
        self.progress = progress
        self.board = board
        self._seeded: set[str] = set()

    def members(self, trial: Trial) -> list[tuple[str, Member]]:
        return [(member_key(trial.trial_id, m.number), m) for m in members_of(trial.config)]

    def seen(self, trial: Trial, last: dict[str, Any] | None) -> None:
        """Every member has a record (a restored pack's with its last epoch)."""
        states = (last or {}).get(MEMBER_STATES, {})
        for key, m in self.members(trial):
            state = states.get(str(m.number), {})
            last_member = _last_result(self.progress, state)
            self.progress.seen(key, m.params, last_member, pack=trial.trial_id)
        if self.board is not None and last and trial.trial_id not in self._seeded:
            self._seeded.add(trial.trial_id)
            self.board.seed.remote(last.get(CURVES, {}))

    def started(self, trial: Trial, attempt: int) -> None:
        self.seen(trial, None)
        for key, m in self.members(trial):
            self.progress.started(key, m.params, attempt)

    def restarting(self, trial: Trial, attempt: int, message: str) -> None:
        for key, _ in self.members(trial):
            self.progress.restarting(key, attempt, message)

    def result(self, trial: Trial, result: dict[str, Any]) -> None:
        """A pack's epoch: pictures, then each member's metrics, then who ended."""
        keys = {str(m.number): key for key, m in self.members(trial)}
        for number, picture in (result.pop(SAMPLES, None) or {}).items():
            self.progress.artifact(keys[number], SAMPLES_ARTIFACT, picture)
        for number, metrics in result.get(REPORTS, {}).items():
            self.progress.result(keys[number], metrics)
        self._ends(keys, result)

    def _ends(self, keys: dict[str, str], result: dict[str, Any]) -> None:
        for number, state in result.get(MEMBER_STATES, {}).items():
            if state.get("status") in FINAL_TRIAL_STATUSES:
                self.progress.end(keys[number], state["status"], state.get("message", ""))

    def finished(self, trial: Trial) -> None:
        """The pack ended without error: members end as its last result says, or by epochs."""
        keys = {str(m.number): key for key, m in self.members(trial)}
        self._ends(keys, trial.run_metadata.last_result or {})
        for key in keys.values():
            self.progress.finished(key)

    def failed(self, trial: Trial, message: str) -> None:
        for key, _ in self.members(trial):
            self.progress.end(key, "failed", message)


def _last_result(progress: SweepProgress, state: dict[str, Any]) -> dict[str, Any] | None:
    """A member's state as ``SweepProgress.seen`` reads a restored trial's last result."""
    if not state or not state.get("epoch"):
        return None
    last: dict[str, Any] = {EPOCH: state["epoch"]}
    if state.get("value") is not None:
        last[progress.spec.metric.name] = state["value"]
    return last
