"""What a final sweep leaves on storage: the best trial's last checkpoint, all, or nothing."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from tests.workers.sweeps import RecordingSink, digits_spec, sweep
from workers.driver.probing import CACHE_FILE
from workers.driver.retention import apply_retention, retain_checkpoints
from workers.driver.sweep import experiment_name, run_sweep
from workers.trial.pack import PACK_FILE, PICTURES_DIR

STATE = "experiment_state-2026-11-25_17-00-00.json"
TUNE_FILES = [
    STATE,
    "experiment_state-2026-11-25_16-00-00.json",  # an earlier driver's
    "basic-variant-state-2026-11-25_17-00-00.json",
    "searcher-state-2026-11-25_17-00-00.pkl",
    "tuner.pkl",
    "trainable.pkl",
    "trial.json.sweeps-tmp-dead",  # an interrupted write
]
TRIALS = {"ab12c_00000": "run_trial_ab12c_00000_0_lr=0.1", "ab12c_00001": "run_trial_ab12c_00001_1"}


def files(root: Path) -> set[str]:
    """Every file under ``root``, as a path relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def fake_experiment(root: Path, named: dict[str, str]) -> Path:
    """An experiment directory as Tune leaves it: its state files, and trials with checkpoints
    0-3 and their ``params.json``; ``named`` gives a trial id's last checkpoint in the state."""
    experiment = root / "sweep-x"
    experiment.mkdir()
    for name in TUNE_FILES:
        (experiment / name).write_bytes(b"{}")
    for trial_dir in TRIALS.values():
        for i in range(4):
            (experiment / trial_dir / f"checkpoint_{i:06d}").mkdir(parents=True)
            (experiment / trial_dir / f"checkpoint_{i:06d}" / PACK_FILE).write_bytes(b"w")
        (experiment / trial_dir / "params.json").write_text("{}")
    last = {t: {"trial_id": t, "checkpoint_dir_name": c} for t, c in named.items()}
    trial_data = [
        [json.dumps({"trial_id": t}), json.dumps({"last_result": r})] for t, r in last.items()
    ]
    (experiment / STATE).write_text(json.dumps({"trial_data": trial_data}))
    return experiment


def test_best_keeps_the_checkpoint_the_state_names_last_and_nothing_else(tmp_path):
    # checkpoint_000003 was being uploaded when the trial was stopped: no result names it.
    experiment = fake_experiment(tmp_path, {"ab12c_00001": "checkpoint_000002"})
    kept = retain_checkpoints(pafs.LocalFileSystem(), str(experiment), "ab12c_00001", "best")

    assert kept == f"{TRIALS['ab12c_00001']}/checkpoint_000002"
    assert files(experiment) == {f"{kept}/{PACK_FILE}"}


def test_best_keeps_the_newest_checkpoint_of_a_trial_the_state_does_not_name(tmp_path):
    experiment = fake_experiment(tmp_path, {})
    kept = retain_checkpoints(pafs.LocalFileSystem(), str(experiment), "ab12c_00000", "best")

    assert kept == f"{TRIALS['ab12c_00000']}/checkpoint_000003"
    assert files(experiment) == {f"{kept}/{PACK_FILE}"}


@pytest.mark.parametrize(
    ("best", "keep"), [(None, "best"), ("ab12c_00009", "best"), ("ab12c_00000", "none")]
)
def test_nothing_to_keep_removes_the_experiment(tmp_path, best, keep):
    experiment = fake_experiment(tmp_path, {"ab12c_00000": "checkpoint_000003"})
    assert retain_checkpoints(pafs.LocalFileSystem(), str(experiment), best, keep) is None
    assert list(tmp_path.iterdir()) == []


def test_all_leaves_the_experiment_as_tune_left_it(tmp_path):
    experiment = fake_experiment(tmp_path, {"ab12c_00000": "checkpoint_000003"})
    before = files(experiment)
    assert apply_retention(str(tmp_path), "sweep-x", "ab12c_00000", "all") is None
    assert files(experiment) == before


def test_retention_names_the_kept_checkpoint_under_the_storage_path(tmp_path):
    fake_experiment(tmp_path, {"ab12c_00000": "checkpoint_000003"})
    kept = apply_retention(f"file://{tmp_path}", "sweep-x", "ab12c_00000", "best")
    assert kept == f"file://{tmp_path}/sweep-x/{TRIALS['ab12c_00000']}/checkpoint_000003"
    assert apply_retention(str(tmp_path), "sweep-never-started", None, "best") is None


def test_retention_errors_are_logged_not_raised(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="workers.driver.retention"):
        assert apply_retention("nosuchscheme://bucket/sweeps", "sweep-x", None, "best") is None
    assert "could not reduce nosuchscheme://bucket/sweeps/sweep-x" in caplog.text


def left_on(storage: Path, sweep_uid: str) -> tuple[str, set[str]]:
    """The one trial directory left of the sweep's experiment, and the files under it."""
    experiment = storage / experiment_name(sweep_uid)
    # the deployment's probed pack sizes (workers.driver.probing) and augmentation pictures
    # (workers.trial.pack) are not the sweep's
    shared = {CACHE_FILE, PICTURES_DIR}
    assert [p.name for p in storage.iterdir() if p.name not in shared] == [experiment.name]
    (trial_dir,) = experiment.iterdir()
    return trial_dir.name, files(trial_dir)


@pytest.mark.slow
def test_a_completed_sweep_keeps_only_its_best_trials_last_checkpoint(ray_session, tmp_path):
    spec = digits_spec({"optim.lr": [0.001, 0.1]}, method="grid", epochs=2, max_concurrent=1)
    sink = RecordingSink()
    sweep_uid, status = sweep(spec, sink, tmp_path)

    assert status == "completed" and sink.ended is not None and sink.ended[2] is not None
    best = sink.ended[2]
    trial_dir, left = left_on(tmp_path, sweep_uid)
    assert f"_{sink.last_update(best).pack}_" in trial_dir  # the best trial's pack
    assert left == {f"checkpoint_000001/{PACK_FILE}"}  # epoch 2's
    kept = torch.load(tmp_path / experiment_name(sweep_uid) / trial_dir / sorted(left)[0],
                      weights_only=True)  # fmt: skip
    final = kept["ended"][str(best)]["checkpoint"]  # the best trial's own last state
    assert final["history"][-1]["val_accuracy"] == sink.epochs[best][2]["val_accuracy"]


@pytest.mark.slow
def test_keep_all_leaves_every_trials_checkpoints_and_tunes_state(ray_session, tmp_path):
    # packs of one: how many trials share a pack depends on the CPUs free when it is planned
    spec = digits_spec(
        {"optim.lr": [0.001, 0.1]}, method="grid", epochs=2, packing={"max_members": 1}
    )
    sweep_uid = uuid.uuid4().hex[:8]
    status = run_sweep(
        spec, RecordingSink(), sweep_uid=sweep_uid, storage_path=str(tmp_path),
        keep_checkpoints="all",
    )  # fmt: skip

    assert status == "completed"
    left = files(tmp_path / experiment_name(sweep_uid))
    assert any(name.startswith("experiment_state-") for name in left)
    checkpoints = {p for p in left if p.endswith(f"/checkpoint_000001/{PACK_FILE}")}
    assert len(checkpoints) == 2  # two packs of one


@pytest.mark.slow
def test_a_cancelled_sweep_keeps_only_its_best_trials_last_checkpoint(ray_session, tmp_path):
    spec = digits_spec(
        {"optim.lr": [0.01, 0.02, 0.05, 0.1]}, method="grid", epochs=400, max_concurrent=2
    )
    sink = RecordingSink(cancel_after_epochs=2)
    sweep_uid, status = sweep(spec, sink, tmp_path)

    assert status == "cancelled" and sink.ended is not None
    best = sink.ended[2]
    assert best is not None
    trial_dir, left = left_on(tmp_path, sweep_uid)
    assert f"_{sink.last_update(best).pack}_" in trial_dir
    (kept,) = left  # one checkpoint, the newest, which holds the best trial's state
    state = torch.load(tmp_path / experiment_name(sweep_uid) / trial_dir / kept, weights_only=True)
    assert kept.endswith(PACK_FILE) and str(best) in state["active"]


@pytest.mark.slow
def test_a_failed_sweep_without_a_best_trial_leaves_nothing(ray_session, tmp_path):
    # groups=3 divides neither width; 2 x 1000 x 2 combinations are past the corner check
    # (spec.CORNER_LIMIT), so each trial fails as it starts, with nothing trained.
    params = {
        "model.norm": "group",
        "model.groups": 3,
        "model.width": [32, 64],
        "model.dropout": [i / 4000 for i in range(1000)],
        "model.dropconnect": [False, True],
    }
    spec = digits_spec(params, method="random", max_trials=2, epochs=2, seed=3)
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "failed" and sink.ended is not None and sink.ended[2] is None
    assert list(tmp_path.iterdir()) == []
