"""The lecture's study files carry what the page needs, and claims are judged as stated."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli.lecture import Study, StudyError, read_studies, verdict

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
        ("a > z", {"a": 0.8}, "maximize", "not judged: no result for z"),
    ],
)
def test_verdict_reads_the_expected_order_best_first(
    expect: str, means: dict[str, float], goal: str, says: str
) -> None:
    assert verdict(expect, means, goal) == says
