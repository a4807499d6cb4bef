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
trials whose results arrive together; packs and single trials share the board. Values are
sign-adjusted so larger is better. The board keeps everything in memory: a driver resumed
after a crash seeds it again from what its packs had reported (:meth:`StoppingBoard.seed`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import ray

from workers.spec import EarlyStoppingSpec


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

    def _signed(self, value: float) -> float:
        return value if self.mode == "max" else -value

    def seed(self, number: int, values: list[float]) -> None:
        """Record member ``number``'s curve (epochs 1..n) without judging it."""
        for epoch, value in enumerate(values, start=1):
            self._judge(number, epoch, value, decide=False)

    def report(self, number: int, epoch: int, value: float) -> bool:
        """Record member ``number``'s value at ``epoch``; True when it must stop."""
        return self._judge(number, epoch, value, decide=True)

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


@ray.remote(num_cpus=0)
class StoppingBoard:
    """One sweep's :class:`StoppingRules` shared by its packs (a named Ray actor)."""

    def __init__(self, spec: EarlyStoppingSpec, max_t: int, mode: str) -> None:
        self.rules = StoppingRules(spec, max_t, mode)

    def seed(self, curves: dict[int, list[float]]) -> None:
        for number, values in curves.items():
            self.rules.seed(int(number), values)

    def report(self, values: list[tuple[int, int, float]]) -> list[int]:
        """``(number, epoch, value)`` per member, in order; the numbers that must stop."""
        return [n for n, epoch, value in values if self.rules.report(n, epoch, value)]


def board_name(sweep_uid: str) -> str:
    """The Ray actor name of a sweep's board (in the sweep job's namespace)."""
    return f"sweeps-stopping-{sweep_uid}"
