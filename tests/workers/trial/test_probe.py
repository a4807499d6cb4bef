"""The pack size probe: real measurements on digits, and the size they pick."""

from __future__ import annotations

import torch

from toolbox.config import TrialConfig
from workers.trial.probe import CANDIDATES, best_size, measure


def test_best_size_is_the_largest_within_ten_percent_of_the_best() -> None:
    assert best_size({1: 10.0, 2: 19.0, 4: 30.0, 8: 28.0, 16: 20.0}) == 8
    assert best_size({1: 10.0, 2: 5.0}) == 1
    assert best_size({}) == 1


def test_measure_grows_packs_in_order_until_its_budget() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrialConfig.from_flat({"model.arch": "mlp", "model.width": 32, "model.depth": 2})
        measured = measure(cfg, budget_s=0.5)
        small = measure(cfg, budget_s=0.0)  # the first measurement is over budget: one size
    finally:
        torch.set_num_threads(threads)
    assert list(measured) == list(CANDIDATES[: len(measured)]) and len(measured) >= 3
    assert all(v > 0 for v in measured.values())
    assert list(small) == [1]
