"""A sweep specification as Ray Tune sees it: parameter space, search algorithm, scheduler.

The three methods map onto what Tune already provides:

- ``grid``: ``tune.grid_search`` over every parameter's values, one sample of the grid.
- ``random``: Tune's distributions sampled by a :class:`BasicVariantGenerator` seeded with the
  sweep's seed, so the same specification samples the same trials.
- ``bayes``: Optuna's TPE through :class:`OptunaSearch`, seeded, behind a
  :class:`ConcurrencyLimiter` so at most ``max_concurrent`` trials are suggested ahead of
  their results.

Early stopping is ASHA or the median stopping rule, both over ``training_iteration`` (one
report per epoch, see :mod:`workers.trial.trainable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher
from ray.tune.search.optuna import OptunaSearch

from workers.spec import ChoiceParam, FixedParam, Parameter, RangeParam, SweepSpec

TIME_ATTR = "training_iteration"
"""Scheduler time axis: Tune's count of reports, one per epoch."""


@dataclass(frozen=True)
class SearchPlan:
    """Everything ``tune.TuneConfig`` needs to search a sweep's space.

    Attributes:
        param_space: Tune's parameter space keyed by dotted setting names.
        search_alg: the search algorithm; already limits concurrency itself.
        scheduler: the trial scheduler (early stopping or FIFO).
        num_samples: Tune's ``num_samples`` (1 for a grid: the grid expands itself).
    """

    param_space: dict[str, Any]
    search_alg: SearchAlgorithm | Searcher
    scheduler: TrialScheduler
    num_samples: int


def build_plan(spec: SweepSpec) -> SearchPlan:
    """Translate ``spec`` into Tune's search objects (fresh ones: Tune keeps state in them)."""
    return SearchPlan(
        param_space=param_space(spec),
        search_alg=search_algorithm(spec),
        scheduler=scheduler(spec),
        num_samples=1 if spec.method == "grid" else spec.num_trials,
    )


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's parameter space of ``spec``; a fixed parameter is a constant."""
    if spec.method == "grid":
        return {key: _grid_domain(p) for key, p in spec.parameters.items()}
    return {key: _sampled_domain(p) for key, p in spec.parameters.items()}


def _grid_domain(p: Parameter) -> Any:
    if isinstance(p, FixedParam):
        return p.value
    return tune.grid_search(p.grid_values())


def _sampled_domain(p: Parameter) -> Any:
    if isinstance(p, FixedParam):
        return p.value
    if isinstance(p, ChoiceParam):
        return tune.choice(p.values)
    assert isinstance(p, RangeParam)
    if p.distribution == "uniform":
        return tune.uniform(p.min, p.max)
    if p.distribution == "log_uniform_values":
        return tune.loguniform(p.min, p.max)
    return tune.randint(int(p.min), int(p.max) + 1)  # randint's upper bound is exclusive


def search_algorithm(spec: SweepSpec) -> SearchAlgorithm | Searcher:
    """The seeded search algorithm of ``spec``, limited to ``spec.max_concurrent`` trials."""
    if spec.method == "bayes":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        tpe = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
        return ConcurrencyLimiter(tpe, max_concurrent=spec.max_concurrent)
    return BasicVariantGenerator(max_concurrent=spec.max_concurrent, random_state=spec.seed)


def scheduler(spec: SweepSpec) -> TrialScheduler:
    """ASHA, the median stopping rule, or first-in-first-out (no early stopping)."""
    es = spec.early_stopping
    if es.type == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=spec.epochs,
            grace_period=min(es.grace_period, spec.epochs),
            reduction_factor=es.reduction_factor,
            brackets=es.brackets,
        )
    if es.type == "median":
        return MedianStoppingRule(
            time_attr=TIME_ATTR,
            grace_period=es.grace_period,
            min_samples_required=es.min_samples_required,
        )
    return FIFOScheduler()
