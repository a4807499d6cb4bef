"""The lecture's study files carry what the page needs, and claims are judged as stated."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pytest
import yaml

from service.cli.client import SweepsClient
from service.cli.lecture import (
    HEADLINE_END,
    HEADLINE_START,
    Study,
    StudyError,
    difference,
    read_studies,
    run,
    seed_range,
    verdict,
)
from workers.analysis import Comparison

LECTURE = Path(__file__).resolve().parents[3] / "examples" / "lecture"


def test_every_study_names_its_claim_the_compared_setting_and_the_expected_order() -> None:
    studies = read_studies(LECTURE)
    assert len(studies) == 6
    for study in studies:
        assert study.claim and study.expect, study.path
        compared = study.spec["parameters"].get(study.by) or study.spec.get("variants")
        assert compared, f"{study.path}: by: {study.by} is not swept"


def test_a_study_without_a_claim_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("# A title only.\nname: x\nparameters: {optim.lr: [0.1]}\n")
    with pytest.raises(StudyError, match="claim, by"):
        Study.read(path)


def rows(**scores: list[float]) -> dict[str, Comparison]:
    """Comparison rows of values whose seeds 0, 1, ... reached ``scores``."""
    return {
        value: Comparison(value, 0.1, statistics.fmean(xs), 0.0, len(xs), len(xs),
                          {str(seed): x for seed, x in enumerate(xs)})
        for value, xs in scores.items()
    }  # fmt: skip


NOISE = [0.01, -0.02, 0.015, -0.005, 0.0, 0.02, -0.015, 0.005, -0.01, 0.0]
"""Seed-to-seed noise shared by every value (the seed decides the split of batches, the
initialization): differences between values are judged in pairs, on the same seeds."""


def scores(level: float, jitter: float = 0.0) -> list[float]:
    return [level + n + jitter * ((-1) ** i) for i, n in enumerate(NOISE)]


@pytest.mark.parametrize(
    ("expect", "measured", "goal", "says"),
    [
        ("b > a", rows(a=scores(0.8), b=scores(0.9)), "maximize", "holds on digits: b > a: +0.100"),
        ("a > b", rows(a=scores(0.8), b=scores(0.9)), "maximize", "does not hold on digits: a > b"),
        ("a > b", rows(a=scores(0.1), b=scores(0.2)), "minimize", "holds on digits"),
        # within a tier: as good within MARGIN, though slightly (and consistently) worse
        ("a >= b > c", rows(a=scores(0.895), b=scores(0.9), c=scores(0.5)), "maximize", "holds"),
        ("a >= b > c", rows(a=scores(0.4), b=scores(0.9), c=scores(0.5)), "maximize",
         "does not hold on digits: a >= b: -0.500"),
        # a comma claims nothing between its values: only each against the next tier
        ("a, b > c", rows(a=scores(0.7), b=scores(0.9), c=scores(0.5)), "maximize",
         "holds on digits: a > c: +0.200"),
        ("a, b >= c > d", rows(a=scores(0.9), b=scores(0.6), c=scores(0.9), d=scores(0.5)),
         "maximize", "does not hold on digits: b >= c: -0.300"),
        # a small difference drowned in noise that the seeds do not share: more seeds would tell
        ("a > b", rows(a=scores(0.905, 0.03), b=scores(0.9)), "maximize", "undecided on digits"),
        ("a > z", rows(a=scores(0.8)), "maximize", "not judged: no result for z"),
        ("a > b", rows(a=[0.9, 0.9], b=[0.1, 0.1]), "maximize", "not judged: fewer than 3 seeds"),
    ],
)  # fmt: skip
def test_verdict_judges_each_pair_of_the_expected_order_by_its_interval_over_seeds(
    expect: str, measured: dict[str, Comparison], goal: str, says: str
) -> None:
    assert verdict(expect, measured, goal).startswith(says)


def test_the_interval_pairs_seeds_and_is_the_same_every_time() -> None:
    a, b = rows(a=scores(0.91), b=scores(0.9)).values()
    paired = difference(a.by_seed, b.by_seed, 1.0)
    assert paired.point == pytest.approx(0.01) and 0 < paired.low <= paired.high < 0.0101
    unpaired = difference(a.by_seed, {f"other {k}": v for k, v in b.by_seed.items()}, 1.0)
    assert unpaired.low < 0 < unpaired.high  # the shared noise no longer cancels
    assert difference(a.by_seed, b.by_seed, 1.0) == paired


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")  # TestClient
def test_a_study_runs_through_the_api_and_lands_on_the_page_and_in_the_readme(
    api: SweepsClient, tmp_path: Path
) -> None:
    """The momentum study cut to 2 learning rates, 2 seeds and 2 epochs: 12 trials."""
    study = yaml.safe_load((LECTURE / "momentum.yaml").read_text())
    study |= {"epochs": 2, "parameters": {"optim.lr": [0.01, 0.1], "seed": [0, 1]}}
    header = "".join(
        line + "\n"
        for line in (LECTURE / "momentum.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    folder, out, readme = tmp_path / "studies", tmp_path / "docs", tmp_path / "README.md"
    folder.mkdir()
    (folder / "momentum.yaml").write_text(header + yaml.safe_dump(study))
    readme.write_text(f"# Title\n\n{HEADLINE_START}\nold\n{HEADLINE_END}\n\nrest\n")

    assert run(api, folder, out, readme) == 0

    page = (out / "lecture.md").read_text()
    assert "12 trials" in page and "## Momentum and Nesterov" in page
    for value in ("plain", "momentum", "nesterov"):
        assert f"| {value} | " in page  # a row of the comparison table
    for figure in ("curves.png", "parameters.png"):
        assert f"](lecture/momentum/{figure})" in page
        assert (out / "lecture" / "momentum" / figure).read_bytes().startswith(b"\x89PNG")
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("\n\nrest\n")
    assert "| momentum | variant | nesterov >= momentum > plain |" in text


def test_seeds_replace_every_studys_own() -> None:
    assert seed_range("10-19") == list(range(10, 20)) and seed_range("3") == [3]
    for wrong in ("19-10", "a-b", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="FIRST-LAST"):
            seed_range(wrong)
    study = read_studies(LECTURE)[0].with_seeds([10, 11])
    assert study.spec["parameters"]["seed"] == [10, 11]
    assert read_studies(LECTURE)[0].spec["parameters"]["seed"] == list(range(10))
