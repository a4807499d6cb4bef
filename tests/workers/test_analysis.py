"""Ranking, influence and the per-value comparison of a sweep's trials, on synthetic results."""

from __future__ import annotations

import dataclasses

import pytest

from tests.workers.results import LEVEL, big_results, results, trial
from workers.analysis import (
    Setting,
    compare,
    effects,
    groups,
    influence,
    most_influential,
    ranked,
)


def test_varied_settings_come_from_the_spec_with_their_scales() -> None:
    assert list(results().settings) == [
        Setting("model.norm", "category", listed=True),
        Setting("optim.lr", "linear", listed=True),
        Setting("seed", "linear", listed=True),
    ]  # model.width is fixed
    by_key = {s.key: s for s in big_results(12).settings}
    assert by_key["optim.lr"] == Setting("optim.lr", "log", listed=False)
    assert by_key["optim.batch_size"].scale == "log"  # 8..512 spans more than a decade


def test_the_setting_that_decides_the_metric_is_the_most_influential() -> None:
    scores = influence(results())
    assert next(iter(scores)) == "model.norm" and scores["model.norm"] > 0.9
    assert scores["seed"] < 0.05
    assert most_influential(results()) == "model.norm"
    assert most_influential(big_results()) == "model.norm"  # a range's lr binned, not chosen


def test_effects_name_the_value_that_helped_most_influential_setting_first() -> None:
    found = effects(results([trial(19, "batch", 0.1, 0, "diverged")]))
    assert [e.key for e in found] == ["model.norm", "optim.lr", "seed"]
    norm = found[0]
    assert (norm.best, norm.worst) == ("batch", "none")
    assert norm.best_mean == pytest.approx(LEVEL["batch"] - 0.01)  # mean over lr 0.01 and 0.1
    assert norm.worst_mean == pytest.approx(LEVEL["none"] - 0.01)
    assert (found[1].best, found[1].worst) == ("0.1", "0.01")
    minimized = effects(dataclasses.replace(results(), goal="minimize"))
    assert (minimized[0].best, minimized[0].worst) == ("none", "batch")


def test_failed_and_diverged_trials_are_listed_last_and_never_judged() -> None:
    bad = [trial(19, "batch", 0.1, 0, "diverged"), trial(20, "none", 0.1, 0, "failed")]
    ordered = ranked(results(bad))
    assert [t.number for _, t in ordered[-2:]] == [19, 20]
    assert [rank for rank, _ in ordered[-2:]] == [None, None]
    assert ordered[0][0] == 1 and ordered[0][1].params["model.norm"] == "batch"
    assert sum(len(ts) for ts in groups(results(bad), results().settings[0]).values()) == 18
    assert influence(results(bad)) == influence(results())


def test_comparison_gives_each_value_its_best_lr_and_the_mean_over_seeds() -> None:
    rows = {r.value: r for r in compare(results(), "model.norm")}
    assert list(rows) == ["batch", "layer", "none"]
    for norm, row in rows.items():
        assert row.lr == 0.1 and row.n == 3 and row.trials == 6
        assert row.mean == pytest.approx(LEVEL[norm])
        assert row.std == pytest.approx(0.005)  # seeds 0, 1, 2 move it by -0.005, 0, +0.005
    by_lr = compare(results(), "optim.lr")
    assert [(r.value, r.lr, r.n) for r in by_lr] == [("0.01", None, 9), ("0.1", None, 9)]


def test_a_range_is_compared_by_quantile_bins() -> None:
    rows = compare(big_results(), "optim.lr")
    assert len(rows) == 4 and sum(r.trials for r in rows) == 113  # 7 diverged left out
    with pytest.raises(KeyError, match=r"varied: optim\.lr, model\.norm"):
        compare(big_results(), "model.width")
