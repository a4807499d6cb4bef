"""The sweep's pictures and tables from synthetic results: valid PNGs, drawn fast, every text
inside the canvas and none over another, and tables that name every trial."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib.image
import pytest
from matplotlib.backend_bases import RendererBase
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from tests.workers.results import big_results, results, tour_results, trial
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


@dataclass
class Drawn:
    """What a picture drew, in the PNG's pixels."""

    size: tuple[int, int]
    texts: list[tuple[str, Bbox]] = field(default_factory=list)
    """Every text: titles, labels, tick labels, legends, annotations."""
    outside_axes: list[tuple[str, Bbox]] = field(default_factory=list)
    """The figure's own texts (its title, legends beside the axes), which no axes may cover."""
    axes: list[Bbox] = field(default_factory=list)


def drawn(
    render: Callable[[SweepResults], bytes], sweep: SweepResults, monkeypatch: pytest.MonkeyPatch
) -> Drawn:
    """Draws ``sweep`` with ``render``, recording every text as it is drawn."""
    texts: list[Text] = []
    draw = Text.draw

    def recording(self: Text, renderer: RendererBase) -> None:
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            texts.append(self)
            self._box = self.get_window_extent(renderer)  # type: ignore[attr-defined]

    with monkeypatch.context() as patch:
        patch.setattr(Text, "draw", recording)
        png = render(sweep)
    found = Drawn(size(png))
    for text in texts:
        found.texts.append((text.get_text(), text._box))  # type: ignore[attr-defined]
        if text.axes is None:
            found.outside_axes.append(found.texts[-1])
    if texts and texts[0].figure is not None:
        found.axes = [ax.bbox for ax in texts[0].figure.axes]
    return found


def overlap(a: Bbox, b: Bbox) -> bool:
    """Whether two boxes share more than a pixel each way (touching is not overlapping)."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1


SWEEPS = {"grid": results, "random-120": big_results, "tour": tour_results}


@pytest.mark.parametrize("render", [curves_png, parameters_png])
@pytest.mark.parametrize("sweep", list(SWEEPS))
def test_every_text_lies_inside_the_canvas_and_none_overlaps_another(
    render: Callable[[SweepResults], bytes], sweep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = drawn(render, SWEEPS[sweep](), monkeypatch)
    width, height = picture.size
    assert len(picture.texts) > 10 and picture.axes
    outside = [
        text for text, box in picture.texts
        if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height
    ]  # fmt: skip
    assert not outside, f"off the canvas: {outside}"
    over_text = [
        (a, b) for (a, box_a), (b, box_b) in itertools.combinations(picture.texts, 2)
        if overlap(box_a, box_b)
    ]  # fmt: skip
    assert not over_text, f"over each other: {over_text[:5]}"
    over_axes = [
        text for text, box in picture.outside_axes if any(overlap(box, ax) for ax in picture.axes)
    ]  # fmt: skip
    assert not over_axes, f"over the axes: {over_axes}"


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
