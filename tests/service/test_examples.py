"""The example sweep files are valid requests, and the tour exercises the toolbox's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from toolbox.config import setting_names
from workers.spec import SweepSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SWEEP_FILES = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.name != "trial.yaml")


@pytest.mark.parametrize(
    "path", SWEEP_FILES, ids=[str(p.relative_to(EXAMPLES)) for p in SWEEP_FILES]
)
def test_example_sweeps_are_valid(path: Path) -> None:
    SweepSpec.model_validate(yaml.safe_load(path.read_text()))


def test_the_tour_sets_every_toolbox_setting_but_machine_ones() -> None:
    spec = SweepSpec.model_validate(yaml.safe_load((EXAMPLES / "toolbox-tour.yaml").read_text()))
    in_spec = {"model.arch", "model.width", "model.depth", "epochs", "seed", "data.dataset"}
    assert set(setting_names()) - set(spec.parameters) - in_spec == set()
    assert spec.dataset == "digits" and spec.num_trials <= 24  # under 2 minutes: bench-tour


LECTURE = sorted((EXAMPLES / "lecture").glob("*.yaml"))


@pytest.mark.parametrize("path", LECTURE, ids=[p.stem for p in LECTURE])
def test_each_lecture_study_judges_every_setting_at_its_best_learning_rate(path: Path) -> None:
    """A learning-rate grid and ten seeds per compared setting (enough for a verdict at 95%:
    docs/lecture.md), on digits, as a grid."""
    spec = SweepSpec.model_validate(yaml.safe_load(path.read_text()))
    lr, seed = spec.parameters["optim.lr"], spec.parameters["seed"]
    assert spec.dataset == "digits" and spec.method == "grid"
    assert len(lr.grid_values()) >= 3 and seed.grid_values() == list(range(10))
    assert spec.early_stopping.type == "none"  # every trial runs to the end: means compare
