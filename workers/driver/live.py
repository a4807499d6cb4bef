"""The live objects of the sweeps this process drives, found by the sweep's uid.

Tune pickles its callbacks, stopper and searcher with the experiment, so those hold only the
sweep's uid and find the sweep's :class:`LiveSweep` here; :func:`workers.driver.sweep.run_sweep`
registers it for the length of ``fit()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.driver.planning import PackPlanner
from workers.driver.progress import SweepProgress


@dataclass
class LiveSweep:
    """What the driver's Tune hooks share while a sweep runs.

    Attributes:
        progress: the trials' records, written to the sink.
        planner: cuts each batch of trials into packs.
        board: the sweep's stopping board (a Ray actor handle), or None without early
            stopping.
    """

    progress: SweepProgress
    planner: PackPlanner
    board: Any = None


LIVE: dict[str, LiveSweep] = {}
"""Sweep uid -> the sweep this process is driving."""
