"""The search space, algorithms and trial resources built from a sweep specification."""

from __future__ import annotations

import itertools
from typing import Any

from ray.tune.experiment import Experiment
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search import Searcher, SearchGenerator

from tests.workers.sweeps import digits_spec
from workers.driver.resources import default_gpu_share, trial_resources
from workers.driver.search import build_plan
from workers.spec import SweepSpec


def _noop(config: dict[str, Any]) -> None:
    """A trainable that is never run: Tune only needs something to name the trials after."""


def sampled_configs(spec: SweepSpec, tmp_path) -> list[dict[str, Any]]:
    """The trial configs Tune's search algorithm of ``spec`` generates, in order."""
    plan = build_plan(spec)
    alg = plan.search_alg
    if isinstance(alg, Searcher):
        alg.set_search_properties(spec.metric.name, spec.metric.mode, plan.param_space)
        alg = SearchGenerator(alg)
    exp = Experiment(
        "e",
        _noop,
        config=plan.param_space,
        num_samples=plan.num_samples,
        storage_path=str(tmp_path),
    )
    alg.add_configurations([exp])
    configs = []
    while (trial := alg.next_trial()) is not None:
        configs.append(trial.config)
        alg.on_trial_complete(trial.trial_id, {spec.metric.name: 0.5, "training_iteration": 1})
    return configs


def test_grid_expands_to_exactly_the_grid(tmp_path) -> None:
    spec = digits_spec(
        {
            "optim.lr": [0.01, 0.1, 0.3],
            "model.norm": ["none", "batch"],
            "optim.batch_size": {"distribution": "int_uniform", "min": 32, "max": 33},
            "optim.momentum": 0.5,
        },
        method="grid",
        max_concurrent=100,
    )
    configs = sampled_configs(spec, tmp_path)
    seen = {(c["optim.lr"], c["model.norm"], c["optim.batch_size"]) for c in configs}
    expected = set(itertools.product([0.01, 0.1, 0.3], ["none", "batch"], [32, 33]))
    assert len(configs) == spec.num_trials == 12
    assert seen == expected
    assert {c["optim.momentum"] for c in configs} == {0.5}


def random_spec(seed: int, method: str = "random") -> SweepSpec:
    return digits_spec(
        {
            "optim.lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.3},
            "optim.momentum": {"distribution": "uniform", "min": 0.0, "max": 0.9},
            "optim.batch_size": {"distribution": "int_uniform", "min": 16, "max": 18},
            "model.norm": ["none", "batch", "layer"],
        },
        method=method,
        max_trials=12,
        seed=seed,
        max_concurrent=100,
    )


def test_random_search_with_the_same_seed_samples_the_same_trials(tmp_path) -> None:
    first = sampled_configs(random_spec(seed=7), tmp_path)
    again = sampled_configs(random_spec(seed=7), tmp_path)
    other = sampled_configs(random_spec(seed=8), tmp_path)
    assert len(first) == 12
    assert first == again
    assert first != other
    for c in first:
        assert 0.001 <= c["optim.lr"] <= 0.3
        assert c["optim.batch_size"] in {16, 17, 18}  # int_uniform includes max
    assert {c["optim.batch_size"] for c in first} == {16, 17, 18}


def test_bayes_search_is_seeded_tpe(tmp_path) -> None:
    first = sampled_configs(random_spec(seed=3, method="bayes"), tmp_path)
    again = sampled_configs(random_spec(seed=3, method="bayes"), tmp_path)
    assert len(first) == 12
    assert first == again
    assert all(0.001 <= c["optim.lr"] <= 0.3 for c in first)


def test_scheduler_follows_early_stopping() -> None:
    params = {"optim.lr": [0.01, 0.1]}
    asha = build_plan(digits_spec(params, early_stopping={"type": "asha", "grace_period": 1}))
    median = build_plan(digits_spec(params, early_stopping={"type": "median"}))
    assert isinstance(asha.scheduler, ASHAScheduler)
    assert isinstance(median.scheduler, MedianStoppingRule)
    assert isinstance(build_plan(digits_spec(params)).scheduler, FIFOScheduler)


def test_gpu_share_packs_max_concurrent_trials_per_gpu() -> None:
    assert default_gpu_share({"CPU": 8}, max_concurrent=4) == 0.0
    assert default_gpu_share({"GPU": 1}, max_concurrent=1) == 1.0
    assert default_gpu_share({"GPU": 1}, max_concurrent=4) == 0.25
    assert default_gpu_share({"GPU": 1}, max_concurrent=3) == 0.25
    assert default_gpu_share({"GPU": 2}, max_concurrent=4) == 0.5
    assert default_gpu_share({"GPU": 8}, max_concurrent=4) == 1.0
    explicit = digits_spec({"optim.lr": [0.1]}, resources_per_trial={"cpu": 2, "gpu": 0})
    assert trial_resources(explicit, {"GPU": 4}).gpu == 0.0
