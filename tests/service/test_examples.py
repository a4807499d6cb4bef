"""The example sweep files are valid requests, and the tour exercises the toolbox's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from toolbox.config import setting_names
from workers.spec import SweepSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SWEEP_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "trial.yaml")


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_example_sweeps_are_valid(path: Path) -> None:
    SweepSpec.model_validate(yaml.safe_load(path.read_text()))


def test_the_tour_sets_every_toolbox_setting_but_machine_ones() -> None:
    spec = SweepSpec.model_validate(yaml.safe_load((EXAMPLES / "toolbox-tour.yaml").read_text()))
    in_spec = {"model.arch", "model.width", "model.depth", "epochs", "seed", "data.dataset"}
    assert set(setting_names()) - set(spec.parameters) - in_spec == set()
    assert spec.dataset == "digits" and spec.num_trials <= 8
