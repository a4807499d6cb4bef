"""The sweep's pictures and tables from synthetic results: valid PNGs, drawn fast, and tables
that name every trial."""

from __future__ import annotations

import io
import time

import matplotlib.image

from tests.workers.results import big_results, results, trial
from workers.analysis import SweepResults, TrialResult
from workers.plots import curves_png, parameters_png
from workers.summary import report_markdown, summary_markdown

PNG = b"\x89PNG\r\n\x1a\n"


def size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    height, width = matplotlib.image.imread(io.BytesIO(png), format="png").shape[:2]
    return width, height


def test_curves_and_parameters_are_pngs() -> None:
    bad = [trial(19, "batch", 0.1, 0, "diverged")]
    assert size(curves_png(results(bad))) == (990, 378)
    width, height = size(parameters_png(results(bad)))
    assert width > 1000 and height > 300  # three settings side by side


def test_pictures_of_a_sweep_without_epochs_or_varied_settings_still_draw() -> None:
    empty = SweepResults("empty", "val_loss", "minimize", [], [])
    for render in (curves_png, parameters_png):
        assert size(render(empty))[0] > 100
    waiting = results([TrialResult(19, "just started", "running", {"model.norm": "none"})])
    assert size(curves_png(waiting))[0] > 100 and size(parameters_png(waiting))[0] > 100


def test_a_120_trial_sweep_draws_well_under_a_second() -> None:
    big = big_results()
    curves_png(big), parameters_png(big)  # matplotlib's imports and font cache
    started = time.perf_counter()
    curves_png(big), parameters_png(big)
    assert time.perf_counter() - started < 1.0


def test_summary_ranks_every_trial() -> None:
    bad = [trial(19, "batch", 0.1, 0, "diverged")]
    text = summary_markdown(results(bad))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| rank | run | status | model.norm | optim.lr | seed |")
    assert len(lines) == 1 + 19
    assert lines[1].startswith("| 1 | norms #12 ") and "| batch | 0.1 |" in lines[1]
    assert lines[-1].startswith("| - | norms #19 ") and "diverged" in lines[-1]
    assert "model.norm 0.9" in text


def test_report_has_the_comparison_the_figures_and_the_trials() -> None:
    text = report_markdown(results(), "model.norm", ["curves.png", "parameters.png"], level=2)
    assert text.startswith("## norms: val_accuracy by model.norm\n")
    assert "| model.norm | best optim.lr | val_accuracy mean ± std | n | trials |" in text
    assert "| batch | 0.1 | 0.9000 ± 0.0050 | 3 | 6 |" in text
    assert "![curves.png](curves.png)" in text and "### Trials" in text
