"""The Tune searcher of every sweep: its trials, batch by batch, handed to Tune as packs.

:class:`PackSearcher` asks :mod:`workers.sampling` for the sweep's trials one batch at a time
(a grid or random sweep's all at once; a Bayesian sweep's batch once every earlier trial has
ended, its history taken from the sweep's records), leaves out the trials that have ended
already (a resumed sweep's), has the planner cut the rest into packs and hands Tune one pack
per call. What it saves with Tune's experiment state is only how far it got (batches asked,
packs not yet handed); everything the search learns from is rebuilt from the trials' records,
which the driver loads from the sink, so a resumed driver continues the same search.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.search import Searcher

from workers import sampling
from workers.driver.live import LIVE
from workers.results import PlannedTrial, pack_config


class PackSearcher(Searcher):
    """A sweep's trials as packs (see the module docstring); ``sweep_uid`` finds the live
    sweep (:data:`workers.driver.live.LIVE`)."""

    def __init__(self, sweep_uid: str) -> None:
        super().__init__()  # no metric for Tune to check: packs report theirs per trial
        self.sweep_uid = sweep_uid
        self.batches = 0  # batches asked of the sampler
        self.queue: list[list[PlannedTrial]] = []  # packs planned, not yet handed to Tune

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        while not self.queue:
            live = LIVE[self.sweep_uid]
            spec = live.progress.spec
            if self.batches >= sampling.batch_count(spec):
                return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel
            first = sampling.batch_numbers(spec, self.batches)[0]
            history = live.progress.history(before=first)
            if history is None:
                return None  # an earlier trial has not ended: ask again later
            ended = live.progress.ended()
            trials = sampling.batch(spec, self.batches, history)
            self.queue = live.planner.packs([t for t in trials if t.number not in ended])
            self.batches += 1
        return pack_config(self.queue.pop(0))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Nothing to do: outcomes reach the search through the trials' records."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"batches": self.batches, "queue": self.queue}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.batches, self.queue = state["batches"], state["queue"]
