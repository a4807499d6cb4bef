"""The lecture's study files carry what the page needs, and claims are judged as stated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.cli.client import SweepsClient
from service.cli.lecture import (
    HEADLINE_END,
    HEADLINE_START,
    Study,
    StudyError,
    read_studies,
    run,
    verdict,
)

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


@pytest.mark.parametrize(
    ("expect", "means", "goal", "says"),
    [
        ("b > a", {"a": 0.8, "b": 0.9}, "maximize", "holds on digits"),
        (
            "a > b",
            {"a": 0.8, "b": 0.9},
            "maximize",
            "does not hold on digits: a is not better than b",
        ),
        ("a > b", {"a": 0.1, "b": 0.2}, "minimize", "holds on digits"),
        ("a >= b > c", {"a": 0.8, "b": 0.9, "c": 0.5}, "maximize", "holds on digits"),
        (
            "a >= b > c",
            {"a": 0.4, "b": 0.9, "c": 0.5},
            "maximize",
            "does not hold on digits: a is not better than c",
        ),
        ("a > z", {"a": 0.8}, "maximize", "not judged: no result for z"),
    ],
)
def test_verdict_reads_the_expected_order_best_first(
    expect: str, means: dict[str, float], goal: str, says: str
) -> None:
    assert verdict(expect, means, goal) == says


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
