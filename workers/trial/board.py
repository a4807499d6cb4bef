"""Early stopping of packed trials: ASHA and the median stopping rule, decided per member.

A packed sweep's Tune trials are packs, so Tune's schedulers cannot stop one member. Every
pack of the sweep reports its members' metric after each epoch to the sweep's
:class:`StoppingBoard` (a Ray actor the driver starts) and stops the members it names. The
rules are Tune's own (``ray.tune.schedulers``), applied to member trials:

- ASHA: rungs at ``grace_period * reduction_factor**k`` epochs below ``max_t``; a member
  reaching a rung is stopped when its value is below the ``1 - 1/reduction_factor`` quantile
  of the values recorded at that rung before it, then recorded (a member is judged at its
  highest rung reached only). With several brackets, member ``n`` belongs to bracket
  ``n % brackets``, whose rungs start ``bracket`` rungs higher.
- Median: from ``grace_period`` on, a member whose best value so far is worse than the median
  of the other members' means from ``grace_period`` up to that epoch (members that reached
  it, at least ``min_samples_required``) is stopped.

Members of one pack reach a rung together and are judged one after another, as Tune judges
trials whose results arrive together. Values are sign-adjusted so larger is better.

The board keeps everything in memory. Ray restarts a board that dies (and retries the calls
made meanwhile), empty: its reports then wait, up to :data:`SEED_WAIT_S`, until the driver
seeds it again with every trial's curve (:meth:`StoppingBoard.seed` with ``complete``), so no
decision is made on a partial picture while the driver lives. The driver seeds a new board at
once and checks each second whether its board restarted; a driver resumed after a crash seeds
its new board from the curves the sink holds; a retried pack adds its trials' curves from its
checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import ray

from workers.spec import EarlyStoppingSpec

SEED_WAIT_S = 60.0
"""How long a restarted board's reports wait for the driver's seed before deciding anyway."""


@dataclass
class StoppingRules:
    """The pure rule of :class:`StoppingBoard` (no Ray): feed values, get decisions."""

    spec: EarlyStoppingSpec
    max_t: int
    mode: str
    curves: dict[int, dict[int, float]] = field(default_factory=dict)
    """Member number -> epoch -> sign-adjusted value."""
    rungs: dict[tuple[int, float], dict[int, float]] = field(default_factory=dict)
    """(bracket, milestone) -> member number -> value recorded there."""
    stopped: set[int] = field(default_factory=set)
    """Members stopped: a retried pack that trains one again past its stop is told again."""

    def _signed(self, value: float) -> float:
        return value if self.mode == "max" else -value

    def seed(self, number: int, values: list[float]) -> None:
        """Record member ``number``'s curve (epochs 1..n) without judging it."""
        for epoch, value in enumerate(values, start=1):
            self._judge(number, epoch, value, decide=False)

    def report(self, number: int, epoch: int, value: float) -> bool:
        """Record member ``number``'s value at ``epoch``; True when it must stop."""
        if number in self.stopped:
            return True
        stop = self._judge(number, epoch, value, decide=True)
        if stop:
            self.stopped.add(number)
        return stop

    def _judge(self, number: int, epoch: int, value: float, decide: bool) -> bool:
        curve = self.curves.setdefault(number, {})
        if epoch in curve:  # a repeat (a resumed pack): decided before
            return False
        curve[epoch] = self._signed(value)
        if self.spec.type == "asha":
            return self._asha(number, epoch, curve[epoch], decide)
        if self.spec.type == "median":
            return decide and self._median(number, epoch)
        return False

    def milestones(self, bracket: int) -> list[float]:
        """The bracket's rungs, highest first (Tune's ``_Bracket``)."""
        rf, grace = self.spec.reduction_factor, min(self.spec.grace_period, self.max_t)
        count = int(math.log(self.max_t / grace) / math.log(rf) - bracket + 1)
        return [grace * rf ** (k + bracket) for k in reversed(range(count))]

    def _asha(self, number: int, epoch: int, value: float, decide: bool) -> bool:
        bracket = number % self.spec.brackets
        for milestone in self.milestones(bracket):
            recorded = self.rungs.setdefault((bracket, milestone), {})
            if epoch >= milestone and number in recorded:
                return False  # judged at its highest rung already
            if epoch < milestone:
                continue
            stop = False
            if decide and recorded:
                cut = _percentile(list(recorded.values()), (1 - 1 / self.spec.reduction_factor))
                stop = value < cut
            recorded[number] = value
            return stop
        return False

    def _median(self, number: int, epoch: int) -> bool:
        if epoch < self.spec.grace_period:
            return False
        grace = self.spec.grace_period
        others = [
            statistics.fmean(v for t, v in curve.items() if grace <= t <= epoch)
            for n, curve in self.curves.items()
            if n != number and max(curve, default=0) >= epoch
        ]
        if len(others) < self.spec.min_samples_required:
            return False
        return max(self.curves[number].values()) < statistics.median(others)


def _percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, ``q`` in [0, 1]."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class StoppingBoard:
    """One sweep's :class:`StoppingRules` shared by its packs (a named Ray actor that Ray
    restarts when it dies; see the module docstring)."""

    def __init__(self, spec: EarlyStoppingSpec, max_t: int, mode: str) -> None:
        self.rules = StoppingRules(spec, max_t, mode)
        self.seeded = asyncio.Event()

    async def seed(
        self, curves: dict[int, list[float]], complete: bool = False, stopped: Sequence[int] = ()
    ) -> None:
        """Record curves (epochs 1..n) without judging them, and the trials ``stopped``
        already; ``complete``: every trial's, so the board decides from now on."""
        for number, values in curves.items():
            self.rules.seed(int(number), values)
        self.rules.stopped.update(int(n) for n in stopped)
        if complete:
            self.seeded.set()

    async def is_seeded(self) -> bool:
        """Whether the board decides (False after a restart, until the driver seeds it)."""
        return self.seeded.is_set()

    async def report(self, values: list[tuple[int, int, float]]) -> list[int]:
        """``(number, epoch, value)`` per member, in order; the numbers that must stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.seeded.wait(), SEED_WAIT_S)
        return [n for n, epoch, value in values if self.rules.report(n, epoch, value)]


def board_name(sweep_uid: str) -> str:
    """The Ray actor name of a sweep's board (in the sweep job's namespace)."""
    return f"sweeps-stopping-{sweep_uid}"
