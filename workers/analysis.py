"""What a sweep's trials say about its settings: ranking, influence and per-value comparisons.

Pure functions of plain data (:class:`SweepResults`), built by the service from its database
or by the CLI from the API; :mod:`workers.plots` and :mod:`workers.summary` draw and write them.

A trial's *final* value is its metric at its last reported epoch, as the search and the API's
best trial judge it. Failed and diverged trials have none: they are listed (last in the ranking)
and drawn, but never ranked, never count towards a setting's influence, and never enter a
comparison's mean.

The *influence* of a varied setting is the share of the final metric's variance between the
groups of trials that share its value (eta squared, 0 to 1): 1 when the setting alone decides
the metric, 0 when every value does as well on average. A setting drawn from a range, whose
trials rarely share a value, is grouped into quantile bins of its values first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.spec import PARAMETERS, ChoiceParam, RangeParam

NOT_RANKED = frozenset({"failed", "diverged"})
"""Trial statuses without a final value (see the module)."""
LR, SEED = "optim.lr", "seed"
"""The settings a comparison picks the best of (the learning rate) and averages over (seeds)."""
MAX_BINS = 4
"""A range's values are grouped into at most this many quantile bins (3 trials a bin at least)."""
Scale = Literal["category", "linear", "log"]


@dataclass(frozen=True)
class Setting:
    """A varied setting of the sweep: how to draw it (``scale``) and whether its values are
    listed in the spec (``listed``: trials share values) or drawn from a range."""

    key: str
    scale: Scale
    listed: bool


@dataclass(frozen=True)
class TrialResult:
    """One trial: its ``curve`` is each reported epoch's number and metrics, in order."""

    number: int
    name: str
    status: str
    params: Mapping[str, Any]
    curve: Sequence[tuple[int, Mapping[str, float]]] = ()

    def final(self, metric: str) -> float | None:
        """The metric at the last reported epoch; None for a failed or diverged trial."""
        if self.status in NOT_RANKED or not self.curve:
            return None
        value = self.curve[-1][1].get(metric)
        return float(value) if value is not None and math.isfinite(value) else None

    def best(self, metric: str, goal: str) -> float | None:
        """The best value of the metric over the trial's epochs."""
        values = [m[metric] for _, m in self.curve if metric in m and math.isfinite(m[metric])]
        if not values:
            return None
        return max(values) if goal == "maximize" else min(values)


@dataclass(frozen=True)
class SweepResults:
    """A sweep's trials with what is needed to judge them."""

    name: str
    metric: str
    goal: str
    settings: Sequence[Setting]
    trials: Sequence[TrialResult] = field(default_factory=list)

    def setting(self, key: str) -> Setting:
        """The varied setting ``key``; raises KeyError naming the varied ones."""
        for s in self.settings:
            if s.key == key:
                return s
        raise KeyError(f"{key} is not varied in this sweep; varied: {self.varied_names}")

    @property
    def varied_names(self) -> str:
        """The varied settings, comma-separated (for messages)."""
        return ", ".join(s.key for s in self.settings) or "none"


def settings_of(parameters: Mapping[str, Any]) -> list[Setting]:
    """The varied settings of a stored spec's ``parameters`` (the ``variant`` included).

    A log-uniform range, or a list of positive numbers spanning more than a decade, is drawn
    on a log scale; other numbers on a linear one; anything else as categories.
    """
    found = []
    for key, p in PARAMETERS.validate_python(dict(parameters)).items():
        if isinstance(p, RangeParam):
            scale: Scale = "log" if p.distribution == "log_uniform_values" else "linear"
            found.append(Setting(key, scale, listed=False))
        elif isinstance(p, ChoiceParam) and p.varies:
            found.append(Setting(key, _list_scale(p.values), listed=True))
    return found


def _list_scale(values: Sequence[Any]) -> Scale:
    if not all(_is_number(v) for v in values):
        return "category"
    low, high = min(values), max(values)
    return "log" if low > 0 and high / low > 10 else "linear"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ranked(results: SweepResults) -> list[tuple[int | None, TrialResult]]:
    """Trials best first by their final value, each with its rank; those without one
    (failed, diverged, no epoch yet) follow, unranked, in number order."""
    sign = -1.0 if results.goal == "maximize" else 1.0
    scored = [(t.final(results.metric), t) for t in results.trials]
    with_value = sorted(
        ((v, t) for v, t in scored if v is not None), key=lambda p: (sign * p[0], p[1].number)
    )
    rest = sorted((t for v, t in scored if v is None), key=lambda t: t.number)
    return [(i + 1, t) for i, (_, t) in enumerate(with_value)] + [(None, t) for t in rest]


def groups(results: SweepResults, setting: Setting) -> dict[str, list[TrialResult]]:
    """The trials with a final value, grouped by the setting's value (a range's: by quantile
    bin, labelled ``low-high``), in the values' order."""
    scored = [
        t for t in results.trials if t.final(results.metric) is not None and setting.key in t.params
    ]
    if setting.listed or setting.scale == "category":
        ordered = sorted(scored, key=lambda t: _order(t.params[setting.key]))
        out: dict[str, list[TrialResult]] = {}
        for t in ordered:
            out.setdefault(str(t.params[setting.key]), []).append(t)
        return out
    return _bins(scored, setting.key)


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if _is_number(value) else (1, str(value))


def _bins(trials: list[TrialResult], key: str) -> dict[str, list[TrialResult]]:
    """Quantile bins of a range's values: as many as give three trials each, at most
    :data:`MAX_BINS`."""
    ordered = sorted(trials, key=lambda t: float(t.params[key]))
    n = max(1, min(MAX_BINS, len(ordered) // 3))
    out: dict[str, list[TrialResult]] = {}
    for i in range(n):
        part = ordered[i * len(ordered) // n : (i + 1) * len(ordered) // n]
        if part:
            low, high = part[0].params[key], part[-1].params[key]
            out[f"{low:.3g}-{high:.3g}"] = part
    return out


def influence(results: SweepResults) -> dict[str, float]:
    """Each varied setting's eta squared on the final metric (see the module), highest first;
    0 where there are fewer than two groups or the metric does not vary."""
    out = {s.key: _eta_squared(results, s) for s in results.settings}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _eta_squared(results: SweepResults, setting: Setting) -> float:
    by_value = [
        [v for t in ts if (v := t.final(results.metric)) is not None]
        for ts in groups(results, setting).values()
    ]
    values = [v for g in by_value for v in g]
    if len(by_value) < 2 or len(values) < 3:
        return 0.0
    mean = statistics.fmean(values)
    total = sum((v - mean) ** 2 for v in values)
    if total <= 0:
        return 0.0
    between = sum(len(g) * (statistics.fmean(g) - mean) ** 2 for g in by_value)
    return between / total


def most_influential(results: SweepResults) -> str | None:
    """The varied setting with the highest influence (the first varied one on a tie, and
    when nothing can be judged yet); None when nothing is varied."""
    if not results.settings:
        return None
    scores = influence(results)
    return max(results.settings, key=lambda s: scores[s.key]).key


@dataclass(frozen=True)
class Comparison:
    """One value of the compared setting: the learning rate whose mean over seeds is best
    (None when the learning rate is not varied), that mean, its standard deviation over the
    ``n`` trials averaged (0 for one), how many trials had this value in all, and the final
    metric at that rate per seed (``by_seed``; trials sharing a seed averaged), which a
    verdict resamples."""

    value: str
    lr: float | None
    mean: float
    std: float
    n: int
    trials: int
    by_seed: Mapping[str, float] = field(default_factory=dict)


def compare(results: SweepResults, by: str) -> list[Comparison]:
    """Per value of the setting ``by``: its best learning rate, and the mean and standard
    deviation of the final metric over the trials at that rate (its seeds, and any other
    setting that varies). Values without a ranked trial are left out.

    Raises:
        KeyError: ``by`` is not a varied setting of the sweep.
    """
    setting = results.setting(by)
    lr_varied = any(s.key == LR for s in results.settings) and by != LR
    sign = 1.0 if results.goal == "maximize" else -1.0
    rows = []
    for value, trials in groups(results, setting).items():
        at_lr: dict[Any, list[TrialResult]] = {}
        for t in trials:  # grouped trials all have a final value
            at_lr.setdefault(t.params.get(LR) if lr_varied else None, []).append(t)
        lr, best = max(at_lr.items(), key=lambda kv: sign * _mean_final(kv[1], results.metric))
        scores = [float(t.final(results.metric)) for t in best]  # type: ignore[arg-type]
        by_seed: dict[str, list[float]] = {}
        for t, score in zip(best, scores, strict=True):
            by_seed.setdefault(str(t.params.get(SEED, f"#{t.number}")), []).append(score)
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        mean, lr_value = statistics.fmean(scores), (float(lr) if lr is not None else None)
        seeds = {seed: statistics.fmean(values) for seed, values in by_seed.items()}
        rows.append(Comparison(value, lr_value, mean, std, len(scores), len(trials), seeds))
    return rows


def _mean_final(trials: Sequence[TrialResult], metric: str) -> float:
    return statistics.fmean(float(t.final(metric)) for t in trials)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Effect:
    """What one varied setting did: the value (or a range's bin) whose trials did best on
    average, the one that did worst, their mean final metric, and the setting's influence."""

    key: str
    influence: float
    best: str
    best_mean: float
    worst: str
    worst_mean: float


def effects(results: SweepResults) -> list[Effect]:
    """Each varied setting that can be judged (two groups of trials with a final value at
    least), most influential first."""
    sign = 1.0 if results.goal == "maximize" else -1.0
    found = []
    for key, share in influence(results).items():
        means = {
            value: statistics.fmean(float(t.final(results.metric)) for t in trials)  # type: ignore[arg-type]
            for value, trials in groups(results, results.setting(key)).items()
        }
        if len(means) < 2:
            continue
        best = max(means, key=lambda v: sign * means[v])
        worst = min(means, key=lambda v: sign * means[v])
        found.append(Effect(key, share, best, means[best], worst, means[worst]))
    return found
