"""The stopping board decides per member exactly as Tune's own schedulers decide per trial."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from workers.spec import EarlyStoppingSpec
from workers.trial.board import StoppingRules


@dataclass(eq=False)
class _TuneTrial:
    """What Tune's schedulers read of a trial: its id and status (hashable by identity)."""

    trial_id: str
    status: str = "RUNNING"


@dataclass
class _Controller:
    """What the median rule asks Tune's controller: the live trials (none waiting here)."""

    trials: list[_TuneTrial]

    def get_live_trials(self) -> list[_TuneTrial]:
        return self.trials


def _tune_decisions(scheduler: TrialScheduler, curves: list[list[float]]) -> list[int]:
    """Members (trials) in lockstep, epoch by epoch; the epoch each was stopped at (0: never,
    or at its last epoch, where it completes either way: Tune's ASHA stops every trial at
    ``max_t``)."""
    trials = [_TuneTrial(f"t{i}") for i in range(len(curves))]
    for trial in trials:
        scheduler.on_trial_add(None, trial)  # type: ignore[arg-type]
    controller = _Controller(trials)
    stopped = [0] * len(curves)
    for epoch in range(1, len(curves[0]) + 1):
        for i, trial in enumerate(trials):
            if stopped[i]:
                continue
            result = {"training_iteration": epoch, "m": curves[i][epoch - 1]}
            action = scheduler.on_trial_result(controller, trial, result)  # type: ignore[arg-type]
            if action == TrialScheduler.STOP:
                stopped[i] = epoch
                trial.status = "TERMINATED"
    return [0 if e == len(curves[0]) else e for e in stopped]


def _board_decisions(rules: StoppingRules, curves: list[list[float]]) -> list[int]:
    stopped = [0] * len(curves)
    for epoch in range(1, len(curves[0]) + 1):
        for i in range(len(curves)):
            if not stopped[i] and rules.report(i, epoch, curves[i][epoch - 1]):
                stopped[i] = epoch
    return [0 if e == len(curves[0]) else e for e in stopped]


def _curves(seed: int, members: int = 12, epochs: int = 9) -> list[list[float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(members):
        level, slope = rng.uniform(0, 1), rng.uniform(-0.05, 0.1)
        out.append([level + slope * t + rng.gauss(0, 0.02) for t in range(epochs)])
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize(("grace", "rf"), [(1, 3.0), (2, 2.0), (1, 2.5)])
def test_asha_matches_tunes_scheduler(seed: int, mode: str, grace: int, rf: float) -> None:
    curves = _curves(seed)
    spec = EarlyStoppingSpec(type="asha", grace_period=grace, reduction_factor=rf)
    tune_asha = ASHAScheduler(
        time_attr="training_iteration", metric="m", mode=mode, max_t=9,
        grace_period=grace, reduction_factor=rf, brackets=1,
    )  # fmt: skip
    expected = _tune_decisions(tune_asha, curves)
    assert _board_decisions(StoppingRules(spec, max_t=9, mode=mode), curves) == expected
    assert any(expected), "the case stops nobody: it would not test the rule"


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["max", "min"])
def test_median_rule_matches_tunes_scheduler(seed: int, mode: str) -> None:
    curves = _curves(seed)
    spec = EarlyStoppingSpec(type="median", grace_period=2, min_samples_required=3)
    tune_median = MedianStoppingRule(
        time_attr="training_iteration", metric="m", mode=mode, grace_period=2,
        min_samples_required=3,
    )  # fmt: skip
    expected = _tune_decisions(tune_median, curves)
    assert _board_decisions(StoppingRules(spec, max_t=9, mode=mode), curves) == expected
    assert any(expected)


def test_seeded_curves_count_but_are_never_judged() -> None:
    spec = EarlyStoppingSpec(type="asha", grace_period=1, reduction_factor=2)
    rules = StoppingRules(spec, max_t=4, mode="max")
    rules.seed(0, [0.9, 0.95])  # a pack that ended before the driver restarted
    rules.seed(1, [0.1])  # a bad member, recorded, not stopped (it ended long ago)
    assert not rules.report(1, 1, 0.1)  # a repeat is no new decision
    assert rules.report(2, 1, 0.05)  # judged against both: below the median
    assert not rules.report(3, 1, 0.97)
