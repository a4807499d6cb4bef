"""The storage filesystem Tune writes sweeps through: whole files or nothing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from workers.driver.storage import TMP_MARK, local_path, restore_points, storage_filesystem


@pytest.fixture
def fs(tmp_path: Path) -> pafs.FileSystem:
    made = storage_filesystem(str(tmp_path))
    assert made is not None
    return made


def write(fs: pafs.FileSystem, path: Path, data: bytes) -> None:
    with fs.open_output_stream(str(path)) as out:
        out.write(data)


def test_a_file_appears_only_when_its_stream_is_closed(fs, tmp_path):
    target = tmp_path / "experiment_state-x.json"
    with fs.open_output_stream(str(target)) as out:
        out.write(b'{"trials": ')
        assert not target.exists()
        assert [p.name for p in tmp_path.iterdir() if TMP_MARK in p.name]
        out.write(b"[]}")
    assert json.loads(target.read_text()) == {"trials": []}
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_torn_state_files_are_not_published_and_the_previous_version_stays(fs, tmp_path):
    state, searcher = tmp_path / "experiment_state-x.json", tmp_path / "searcher-state.pkl"
    write(fs, state, b'{"v": 1}')
    whole = pickle.dumps({"points": [1.0, 2.0], "name": "tpe"})
    write(fs, searcher, whole)

    write(fs, state, b'{"v": 2, "trial_data": [')  # a copy that read a half-written source
    write(fs, state, b"")
    write(fs, searcher, whole[: len(whole) // 2])
    write(fs, searcher, whole + b"trailing")

    assert json.loads(state.read_text()) == {"v": 1}
    assert pickle.loads(searcher.read_bytes()) == pickle.loads(whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([searcher.name, state.name])


def test_other_files_are_published_as_written(fs, tmp_path):
    write(fs, tmp_path / "model.pt", b"\x00\x01 not a pickle")
    assert (tmp_path / "model.pt").read_bytes() == b"\x00\x01 not a pickle"


def test_copy_files_publishes_a_directory_and_hides_interrupted_writes(fs, tmp_path):
    src = tmp_path / "src"
    (src / "checkpoint_000001").mkdir(parents=True)
    (src / "experiment_state-x.json").write_text('{"ok": true}')
    (src / "checkpoint_000001" / "state.bin").write_bytes(bytes(range(256)) * 4096)
    dst = tmp_path / "dst"
    fs.create_dir(str(dst), recursive=True)
    (dst / f"old.json{TMP_MARK}dead").write_text("{")  # left by a killed writer

    pafs.copy_files(str(src), str(dst), destination_filesystem=fs)

    copied = dst / "checkpoint_000001" / "state.bin"
    assert copied.read_bytes() == (src / "checkpoint_000001" / "state.bin").read_bytes()
    listed = fs.get_file_info(pafs.FileSelector(str(dst), recursive=True))
    assert sorted(i.base_name for i in listed) == [
        "checkpoint_000001",
        "experiment_state-x.json",
        "state.bin",
    ]


def test_the_filesystem_travels_to_trial_workers_pickled(fs):
    again = pickle.loads(pickle.dumps(fs))
    assert again == fs and again.type_name == fs.type_name


def test_object_stores_keep_tunes_own_filesystem(tmp_path):
    assert storage_filesystem("s3://bucket/sweeps") is None
    assert local_path("s3://bucket/sweeps") == "s3://bucket/sweeps"
    assert local_path(f"file://{tmp_path}") == str(tmp_path)
    assert local_path("relative/dir").startswith("/")


def tune_state(last_results: dict[str, dict[str, Any]]) -> bytes:
    """An experiment state shaped like Tune 2.60's: trial_data of [trial json, metadata json]."""
    trial_data = [
        [json.dumps({"trial_id": tid}), json.dumps({"last_result": last})]
        for tid, last in last_results.items()
    ]
    return json.dumps({"trial_data": trial_data, "runner_data": {}}).encode()


def test_a_published_state_prunes_every_checkpoint_older_than_the_one_it_names(fs, tmp_path):
    experiment = tmp_path / "sweep-x"
    a = experiment / "run_trial_ab12c_00000_0_lr=0.1_2026-11-25"
    b = experiment / "run_trial_ab12c_00001_1_lr=0.2_2026-11-25"
    c = experiment / "run_trial_ab12c_00002_2_lr=0.3_2026-11-25"
    for trial in (a, b, c):
        for i in range(5):
            (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
            (trial / f"checkpoint_{i:06d}" / "state.pt").write_bytes(b"w")
    done = {"checkpoint_dir_name": "checkpoint_000004", "done": True}
    state = tune_state(
        {
            "ab12c_00000": {"trial_id": "ab12c_00000", **done},
            # Running: a retry restores from the checkpoint Tune holds, whatever the file says.
            "ab12c_00001": {"trial_id": "ab12c_00001", "checkpoint_dir_name": "checkpoint_000004"},
            "ab12c_00002": {"trial_id": "ab12c_00002", "epoch": 5, "done": True},  # none named
        }
    )
    write(fs, experiment / "experiment_state-2026-11-25_17-00-00.json", state)

    def left(trial: Path) -> list[str]:
        return sorted(p.name for p in trial.iterdir())

    assert left(a) == ["checkpoint_000003", "checkpoint_000004"]
    assert left(b) == ["checkpoint_000003", "checkpoint_000004"]
    assert left(c) == [f"checkpoint_{i:06d}" for i in range(5)]


def test_a_torn_state_prunes_nothing(fs, tmp_path):
    trial = tmp_path / "run_trial_ab12c_00000_0_x"
    (trial / "checkpoint_000000").mkdir(parents=True)
    last = {"trial_id": "ab12c_00000", "checkpoint_dir_name": "x", "done": True}
    whole = tune_state({"ab12c_00000": last})
    write(fs, tmp_path / "experiment_state-t.json", whole[:-5])
    assert (trial / "checkpoint_000000").is_dir()
    assert restore_points(whole) == {}  # a name that is not a checkpoint directory


def test_json_lines_and_pickles_named_json_are_published_whole(fs, tmp_path):
    results = tmp_path / "result.json"  # Tune appends one JSON object per result
    write(fs, results, b'{"epoch": 1}\n{"epoch": 2}\n')
    write(fs, results, b'{"epoch": 1}\n{"epoch": 2}\n{"epo')  # read mid-append: kept back
    assert results.read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'
    params = tmp_path / "params.json"  # one indented document
    write(fs, params, json.dumps({"optim.lr": 0.1, "optim.momentum": 0.9}, indent=2).encode())
    assert json.loads(params.read_text()) == {"optim.lr": 0.1, "optim.momentum": 0.9}
    searcher = tmp_path / "basic-variant-state-2026-11-25_17-00-00.json"  # a pickle, in fact
    whole = pickle.dumps({"_iterators": [], "_finished": False})
    write(fs, searcher, whole)
    write(fs, searcher, whole[:-3])
    assert searcher.read_bytes() == whole


def test_checkpoint_files_are_written_straight_through(fs, tmp_path):
    target = tmp_path / "checkpoint_000003" / "trial_state.pt"
    target.parent.mkdir()
    with fs.open_output_stream(str(target)) as out:
        out.write(b"weights")
        assert not [p for p in target.parent.iterdir() if TMP_MARK in p.name]
    assert target.read_bytes() == b"weights"
