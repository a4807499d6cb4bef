"""Where every trial's parameters come from: one sampler for grid, random and Bayesian search.

A sweep's trials are numbered 1..``num_trials`` and drawn in batches:

- ``grid``: one batch; trial n is the n-th point of the grid (the last parameter varies
  fastest).
- ``random``: one batch; trial n draws each parameter from a generator seeded by the sweep's
  seed and n alone.
- ``bayes``: batches of :func:`batch_size` trials. Batch k is asked of Optuna's TPE, seeded by
  the sweep's seed and k, in a study rebuilt from every earlier trial's outcome
  (:func:`told`), so batch k starts only once every earlier trial has ended. Within a batch
  the sampler's constant liar spreads the asks.

So a sweep's parameters depend on its parameters, method, seed and budget, and on nothing of
how it runs (packing, pack sizes, ``max_concurrent``, the cluster). For grid and random, trial
n depends on (spec, seed, n) alone: a longer sweep's first n trials are a shorter one's. The
study is rebuilt from outcomes (the sink's records), never from a saved sampler, so a resumed
driver continues exactly where its predecessor was.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any

import optuna

from workers.events import TrialOutcome
from workers.results import PlannedTrial
from workers.spec import ChoiceParam, FixedParam, Parameter, RangeParam, SweepSpec

BAYES_ROUNDS = 8
"""Batches of a Bayesian sweep (fewer when it has fewer trials): more learn more, but each
waits for the one before it to end."""
BAYES_BATCH_MAX = 32
"""The most trials one Bayesian batch asks at once."""


def batch_size(spec: SweepSpec) -> int:
    """Trials per batch: all of them for grid and random; about ``num_trials`` /
    :data:`BAYES_ROUNDS` for bayes."""
    if spec.method != "bayes":
        return spec.num_trials
    return max(1, min(BAYES_BATCH_MAX, math.ceil(spec.num_trials / BAYES_ROUNDS)))


def batch_count(spec: SweepSpec) -> int:
    """How many batches the sweep's trials come in."""
    return math.ceil(spec.num_trials / batch_size(spec))


def batch_numbers(spec: SweepSpec, index: int) -> range:
    """The numbers of the trials of batch ``index`` (0-based)."""
    size = batch_size(spec)
    return range(index * size + 1, min((index + 1) * size, spec.num_trials) + 1)


def batch(spec: SweepSpec, index: int, history: Sequence[TrialOutcome]) -> list[PlannedTrial]:
    """The trials of batch ``index``. ``history`` holds the outcome of every trial of the
    earlier batches (bayes learns from it; grid and random ignore it)."""
    numbers = batch_numbers(spec, index)
    if spec.method == "bayes":
        return _ask(spec, index, numbers, history)
    return [PlannedTrial(n, draw(spec, n)) for n in numbers]


def draw(spec: SweepSpec, number: int) -> dict[str, Any]:
    """Trial ``number``'s parameters in a grid or random sweep."""
    keys = list(spec.parameters)
    if spec.method == "grid":
        values = [spec.parameters[k].grid_values() for k in keys]
        index, point = number - 1, {}
        for key, options in reversed(list(zip(keys, values, strict=True))):
            index, pick = divmod(index, len(options))
            point[key] = options[pick]
        return {k: point[k] for k in keys}
    rng = random.Random(f"{spec.seed}/{number}")  # str seeds hash the same everywhere
    return {k: _sample(spec.parameters[k], rng) for k in keys}


def _sample(p: Parameter, rng: random.Random) -> Any:
    if isinstance(p, FixedParam):
        return p.value
    if isinstance(p, ChoiceParam):
        return rng.choice(p.values)
    assert isinstance(p, RangeParam)
    if p.distribution == "uniform":
        return rng.uniform(p.min, p.max)
    if p.distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(p.min), math.log(p.max)))
    return rng.randint(int(p.min), int(p.max))


def distribution(p: Parameter) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a varying parameter."""
    if isinstance(p, ChoiceParam):
        return optuna.distributions.CategoricalDistribution(p.values)
    assert not isinstance(p, FixedParam)
    if p.distribution == "int_uniform":
        return optuna.distributions.IntDistribution(int(p.min), int(p.max))
    return optuna.distributions.FloatDistribution(
        p.min, p.max, log=p.distribution == "log_uniform_values"
    )


def told(
    outcome: TrialOutcome, distributions: dict[str, optuna.distributions.BaseDistribution]
) -> optuna.trial.FrozenTrial | None:
    """What the study learns from one trial's outcome, or None when it learns nothing.

    Completed: its last value. Stopped early (ASHA, median rule) or cancelled: pruned at its
    last epoch, its curve as intermediate values, so TPE ranks it below every completed trial
    and by how far it got. Diverged: pruned at the epoch its metric stopped being finite (a
    NaN value there), the worst of its epoch. Failed (an invalid combination, a crash): a
    failure, which TPE leaves out: it says nothing of the metric. Pending or running: nothing.
    """
    params = {k: outcome.params[k] for k in distributions if k in outcome.params}
    if len(params) != len(distributions):
        return None
    kw: dict[str, Any] = {"params": params, "distributions": distributions}
    Pruned, Complete = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE
    if outcome.status == "completed" and outcome.value is not None:
        return optuna.trial.create_trial(state=Complete, value=outcome.value, **kw)
    if outcome.status in ("stopped", "cancelled") and outcome.curve:
        return optuna.trial.create_trial(state=Pruned, intermediate_values=outcome.curve, **kw)
    if outcome.status == "diverged":
        curve = {**outcome.curve, max(outcome.epoch, 1): math.nan}
        return optuna.trial.create_trial(state=Pruned, intermediate_values=curve, **kw)
    if outcome.status == "failed":
        return optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, **kw)
    return None


def _ask(
    spec: SweepSpec, index: int, numbers: range, history: Sequence[TrialOutcome]
) -> list[PlannedTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    varying = {k: distribution(p) for k, p in spec.parameters.items() if p.varies}
    fixed = {k: p.grid_values()[0] for k, p in spec.parameters.items() if not p.varies}
    seed = random.Random(f"{spec.seed}/bayes/{index}").getrandbits(32)
    with warnings.catch_warnings():  # constant_liar is "experimental" in Optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study = optuna.create_study(direction=spec.metric.goal, sampler=sampler)
    known = sorted(history, key=lambda o: o.number)
    study.add_trials([t for o in known if (t := told(o, varying)) is not None])
    return [PlannedTrial(n, {**fixed, **study.ask(varying).params}) for n in numbers]
