"""What a pack and the sweep's driver exchange: the trials a pack trains, the keys of its results.

Every Tune trial of a sweep is a pack: its config is ``{PACK: {TRIALS: [{number, params}]}}``
(planned by :mod:`workers.driver.planning`, trained by :mod:`workers.trial.pack`). Each result
of a pack carries, under :data:`STATES`, every trial's status, last epoch, value and message;
under :data:`REPORTS`, the metrics of the epoch each trial just completed; under
:data:`SAMPLES`, the augmentation picture of each trial that started for the first time.
Trials are named by their number as a string (results cross JSON). Torch-free and Ray-free: the
driver imports it without either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PACK = "pack"
"""The one parameter of a sweep's Tune trials."""
TRIALS = "trials"
STATES = "trial_states"
REPORTS = "trial_reports"
SAMPLES = "augmented_samples"
"""Trial number -> the PNG of its augmentation (:mod:`workers.trial.samples`), sent once."""
EPOCH = "epoch"
PID = "pid"
"""The pack worker's process id (tests kill it to exercise recovery)."""
NODE = "node_id"


@dataclass(frozen=True)
class PlannedTrial:
    """A trial as the driver plans it: its number (1-based, unique in the sweep) and its
    sampled parameters."""

    number: int
    params: dict[str, Any]

    def as_config(self) -> dict[str, Any]:
        """The trial as its pack's Tune config holds it."""
        return {"number": self.number, "params": self.params}


def pack_config(trials: list[PlannedTrial]) -> dict[str, Any]:
    """The Tune config of a pack of ``trials``."""
    return {PACK: {TRIALS: [t.as_config() for t in trials]}}


def trials_of(tune_config: dict[str, Any]) -> list[PlannedTrial]:
    """The trials of a pack, from its Tune config (as :func:`pack_config` made it)."""
    return [PlannedTrial(int(t["number"]), dict(t["params"])) for t in tune_config[PACK][TRIALS]]


def is_pack(tune_config: dict[str, Any]) -> bool:
    """Whether a Tune trial's config is a pack's as :func:`pack_config` makes it (a sweep
    started by an earlier driver holds others)."""
    pack = tune_config.get(PACK)
    return isinstance(pack, dict) and isinstance(pack.get(TRIALS), list)
