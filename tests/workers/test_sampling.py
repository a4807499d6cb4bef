"""Where trials' parameters come from: one seeded sampler for grid, random and Bayesian search
(no Ray: the sampler is pure)."""

from __future__ import annotations

import itertools
from typing import Any

import optuna
import pytest

from tests.workers.sweeps import digits_spec
from workers import sampling
from workers.events import TrialOutcome
from workers.spec import SweepSpec

RANGES = {
    "optim.lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.3},
    "optim.momentum": {"distribution": "uniform", "min": 0.0, "max": 0.9},
    "optim.batch_size": {"distribution": "int_uniform", "min": 16, "max": 18},
    "model.norm": ["none", "batch", "layer"],
}
HOW_IT_RUNS: list[dict[str, Any]] = [
    {"packing": {"enabled": False}},
    {"packing": {"max_members": 1}},
    {"packing": {"max_members": 7}},
    {"max_concurrent": 1},
    {"max_concurrent": 64},
    {"resources_per_trial": {"cpu": 2, "gpu": 0.25}},
]
"""Settings of how a sweep runs, none of which may change which trials it has."""


def spec(method: str, trials: int = 12, seed: int = 7, **kw: Any) -> SweepSpec:
    return digits_spec(RANGES, method=method, max_trials=trials, seed=seed, **kw)


def all_trials(s: SweepSpec, outcome: Any = None) -> list[dict[str, Any]]:
    """Every trial's parameters, batch by batch, each batch's trials told ``outcome(params)``
    (a value) before the next is asked."""
    history: list[TrialOutcome] = []
    out = []
    for index in range(sampling.batch_count(s)):
        for t in sampling.batch(s, index, history):
            out.append(t.params)
            value = outcome(t.params) if outcome else 0.5
            history.append(TrialOutcome(t.number, t.params, "completed", 1, {1: value}))
    return out


def test_grid_numbers_every_point_once_in_product_order() -> None:
    s = digits_spec(
        {
            "optim.lr": [0.01, 0.1, 0.3],
            "model.norm": ["none", "batch"],
            "optim.batch_size": {"distribution": "int_uniform", "min": 32, "max": 33},
            "optim.momentum": 0.5,
        },
        method="grid",
    )
    trials = all_trials(s)
    expected = itertools.product([0.01, 0.1, 0.3], ["none", "batch"], [32, 33])
    assert [(t["optim.lr"], t["model.norm"], t["optim.batch_size"]) for t in trials] == list(
        expected
    )
    assert {t["optim.momentum"] for t in trials} == {0.5}
    assert [sampling.draw(s, n) for n in (1, 12)] == [trials[0], trials[11]]


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_the_same_spec_and_seed_draw_the_same_trials_and_another_seed_others(method) -> None:
    first = all_trials(spec(method, seed=7))
    assert len(first) == 12
    assert first == all_trials(spec(method, seed=7))
    assert first != all_trials(spec(method, seed=8))
    for t in first:
        assert 0.001 <= t["optim.lr"] <= 0.3 and t["optim.batch_size"] in {16, 17, 18}


@pytest.mark.parametrize("method", ["grid", "random", "bayes"])
@pytest.mark.parametrize("how", HOW_IT_RUNS)
def test_trials_never_depend_on_how_the_sweep_runs(method, how) -> None:
    if method == "grid":
        params: dict[str, Any] = {"optim.lr": [0.01, 0.1], "model.norm": ["none", "batch"]}
        base, other = digits_spec(params, method="grid"), digits_spec(params, method="grid", **how)
    else:
        base, other = spec(method, trials=40), spec(method, trials=40, **how)
    learn = lambda p: -abs(p["optim.lr"] - 0.05) if "optim.lr" in p else 0.0  # noqa: E731
    assert all_trials(base, learn) == all_trials(other, learn)


def test_a_longer_random_sweep_begins_with_the_shorter_ones_trials() -> None:
    assert all_trials(spec("random", trials=40))[:12] == all_trials(spec("random", trials=12))
    s = spec("random", trials=40)
    assert [sampling.draw(s, n) for n in (5, 33)] == [
        sampling.draw(spec("random", trials=5), 5),
        sampling.draw(spec("random", trials=1000), 33),
    ]


def test_random_int_ranges_include_both_ends() -> None:
    assert {t["optim.batch_size"] for t in all_trials(spec("random", trials=60))} == {16, 17, 18}


def test_bayes_asks_in_batches_that_wait_for_every_earlier_trial() -> None:
    s = spec("bayes", trials=40)
    assert sampling.batch_size(s) == 5 and sampling.batch_count(s) == 8
    assert list(sampling.batch_numbers(s, 7)) == [36, 37, 38, 39, 40]
    big = spec("bayes", trials=1000)
    assert sampling.batch_size(big) == sampling.BAYES_BATCH_MAX
    assert sampling.batch_size(spec("bayes", trials=3)) == 1


def test_the_study_learns_each_outcome_as_what_it_was() -> None:
    dists = {"optim.lr": sampling.distribution(spec("bayes").parameters["optim.lr"])}
    params = {"optim.lr": 0.01}
    done = sampling.told(TrialOutcome(1, params, "completed", 3, {3: 0.9}), dists)
    stopped = sampling.told(TrialOutcome(2, params, "stopped", 2, {1: 0.2, 2: 0.3}), dists)
    diverged = sampling.told(TrialOutcome(3, params, "diverged", 2, {1: 0.2}), dists)
    failed = sampling.told(TrialOutcome(4, params, "failed", 0, {}), dists)
    running = sampling.told(TrialOutcome(5, params, "running", 1, {1: 0.5}), dists)
    State = optuna.trial.TrialState
    assert done is not None and done.state == State.COMPLETE and done.value == 0.9
    assert stopped is not None and stopped.state == State.PRUNED
    assert stopped.intermediate_values == {1: 0.2, 2: 0.3}
    assert diverged is not None and diverged.state == State.PRUNED
    assert diverged.intermediate_values[1] == 0.2 and diverged.intermediate_values[2] != 0.2
    assert failed is not None and failed.state == State.FAIL
    assert running is None
