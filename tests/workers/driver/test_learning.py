"""Searches that learn, on a real Ray cluster: on digits the learning rate decides, and a
Bayesian sweep's later trials concentrate in the band of good rates significantly more than a
random sweep's with the same budget and seed, with and without early stopping.

A random sweep's trials never depend on outcomes (:mod:`workers.sampling`), so its share is
read from the sampler; one seed also runs it, to show the driver trains exactly those trials.
No timing anywhere: fixed seeds, and a one-sided Fisher exact test over the pooled seeds.
"""

from __future__ import annotations

from typing import Any

import pytest
from scipy.stats import fisher_exact

from tests.workers.sweeps import RecordingSink, digits_spec, sweep
from workers import sampling
from workers.spec import SweepSpec

pytestmark = pytest.mark.slow
SEEDS = range(5)
TRIALS = 40
GOOD = (0.02, 1.0)
"""The band of learning rates where the digits MLP reaches 0.84-0.91 validation accuracy in two
epochs; it spans a third of the searched range (log10: 1.7 of 5 decades)."""
EARLY_STOPPING: dict[str, dict[str, Any]] = {
    "none": {"type": "none"},
    "asha": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
}


def lr_spec(method: str, seed: int, stopping: str) -> SweepSpec:
    return digits_spec(
        {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 10.0}},
        method=method,
        max_trials=TRIALS,
        epochs=3 if stopping == "asha" else 2,
        seed=seed,
        early_stopping=EARLY_STOPPING[stopping],
    )


def in_band(lrs: list[float]) -> int:
    return sum(GOOD[0] <= lr <= GOOD[1] for lr in lrs)


def later_lrs(sink: RecordingSink) -> list[float]:
    """The learning rates of the second half of the sweep's trials."""
    numbers = sorted(sink.final_status())
    assert numbers == list(range(1, TRIALS + 1))
    return [sink.last_update(n).params["optim.lr"] for n in numbers[TRIALS // 2 :]]


@pytest.mark.parametrize("stopping", list(EARLY_STOPPING))
def test_bayes_concentrates_where_the_metric_is_good_more_than_random(
    stopping, ray_session, tmp_path
):
    bayes_hits = random_hits = 0
    for seed in SEEDS:
        sink = RecordingSink()
        _, status = sweep(lr_spec("bayes", seed, stopping), sink, tmp_path / f"bayes{seed}")
        assert status == "completed", sink.ended
        if stopping == "asha":
            assert "stopped" in sink.final_status().values()  # ASHA did stop trials
        bayes = in_band(later_lrs(sink))

        random_spec = lr_spec("random", seed, stopping)
        trials = sampling.batch(random_spec, 0, [])
        random = in_band([t.params["optim.lr"] for t in trials[TRIALS // 2 :]])
        if seed == SEEDS[0]:  # the driver trains exactly the sampler's trials
            ran = RecordingSink()
            assert sweep(random_spec, ran, tmp_path / f"random{seed}")[1] == "completed"
            assert {n: ran.last_update(n).params for n in ran.final_status()} == {
                t.number: t.params for t in trials
            }
        assert bayes > random, (seed, bayes, random)
        bayes_hits, random_hits = bayes_hits + bayes, random_hits + random

    n = len(SEEDS) * TRIALS // 2
    table = [[bayes_hits, n - bayes_hits], [random_hits, n - random_hits]]
    _, p = fisher_exact(table, alternative="greater")
    assert p < 0.01, (table, p)
