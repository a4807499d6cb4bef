"""``toolbox-train``: runs a config file, prints the curve, rejects bad configs with status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolbox.cli import load_config, main

EXAMPLE = Path(__file__).parents[2] / "examples" / "trial.yaml"


def test_example_runs_prints_the_curve_and_learns(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("toolbox.augment")  # the example uses augmentation
    epochs = load_config(EXAMPLE).epochs
    assert main([str(EXAMPLE), "--set", "device=cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[1].split(), [line.split() for line in lines[2:-1]]
    assert [int(row[0]) for row in rows] == list(range(1, epochs + 1))
    assert float(rows[-1][header.index("val_acc")]) >= 0.95
    assert lines[-1].startswith(f"completed: {epochs} epoch(s), best val_accuracy")


def _write(tmp_path: Path, text: str, name: str = "trial.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("optim:\n  lr: -1\n", "optim.lr", "greater than 0"),
        ("model:\n  widht: 32\n", "model.widht", "Extra inputs"),
        ("model:\n  norm: group\n  groups: 3\n  width: 32\n", "model.groups=3", "divide"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str, hint: str
) -> None:
    assert main([_write(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert field in err and hint in err


def test_bad_override_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([_write(tmp_path, "epochs: 1\n"), "--set", "optim.lr=-1"]) == 2
    captured = capsys.readouterr()
    assert "optim.lr" in captured.err and captured.out == ""  # nothing was trained
    assert main([_write(tmp_path, "epochs: 1\n"), "--set", "epochs"]) == 2


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_json_config_and_divergence_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "model": {"arch": "mlp", "width": 16, "depth": 1},
        "optim": {"lr": 10.0, "weight_decay": 1.0},
        "epochs": 2,
        "device": "cpu",
    }
    assert main([_write(tmp_path, json.dumps(config), "trial.json")]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("diverged: ") and "diverged at epoch" in last
