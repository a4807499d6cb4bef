"""The driver's progress writes, made off Tune's controller thread, against a real Tune run."""

from __future__ import annotations

import glob
import json
import threading
import time
from pathlib import Path

import pytest

from tests.workers.sweeps import RecordingSink, digits_spec, sweep


def covered_epochs(experiment_dir: Path) -> dict[str, int]:
    """``trial key -> last epoch`` in the experiment state on storage ({} while there is none)."""
    covered: dict[str, int] = {}
    for name in glob.glob(str(experiment_dir / "experiment_state-*.json")):
        try:
            state = json.loads(Path(name).read_text())  # published whole (workers.driver.storage)
        except FileNotFoundError:  # the sweep ended and its state was removed (retention)
            continue
        for trial_json, metadata_json in state["trial_data"]:
            epoch = (json.loads(metadata_json).get("last_result") or {}).get("epoch")
            if epoch is not None:
                covered[json.loads(trial_json)["trial_id"]] = int(epoch)
    return covered


@pytest.mark.slow
def test_no_snapshot_reaches_storage_before_the_writes_of_its_results(ray_session, tmp_path):
    # Writes of 0.3 s and a snapshot per controller step (~0.1 s): a snapshot made while an
    # epoch's write is still queued would be seen on storage before the sink has the epoch.
    # Packs of one, so the epoch a snapshot names for a pack is its one trial's.
    spec = digits_spec(
        {"optim.lr": [0.02, 0.1]}, method="grid", epochs=4, packing={"max_members": 1}
    )
    sink = RecordingSink(epoch_write_s=0.3)
    ahead: list[tuple[str, int]] = []
    done = threading.Event()

    def watch() -> None:  # the sink is read after the file: a write seen late is never missed
        while not done.is_set():
            for experiment_dir in tmp_path.glob("sweep-*"):
                for pack, epoch in covered_epochs(experiment_dir).items():
                    trial = {u.pack: u.number for u in list(sink.updates)}.get(pack)
                    if trial is None or epoch not in sink.epochs.get(trial, {}):
                        ahead.append((pack, epoch))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, status = sweep(spec, sink, tmp_path)
    finally:
        done.set()
        watcher.join(10)

    assert status == "completed"
    assert {key: sorted(e) for key, e in sink.epochs.items()} == {
        key: [1, 2, 3, 4] for key in sink.final_status()
    }
    assert ahead == [], "snapshots on storage named epochs the sink did not have yet"


@pytest.mark.slow
def test_a_broken_database_write_fails_the_sweep(ray_session, tmp_path):
    def broken(sink: RecordingSink, key: str, epoch: int, metrics) -> None:
        if epoch == 2:
            raise RuntimeError("constraint violated")

    spec = digits_spec({"optim.lr": [0.05]}, method="grid", epochs=4, max_concurrent=1)
    sink = RecordingSink(on_epoch=broken)
    _, status = sweep(spec, sink, tmp_path)

    assert status == "failed"
    assert sink.ended is not None and sink.ended[0] == "failed"
    assert "epoch 2 of" in sink.ended[1] and "RuntimeError: constraint violated" in sink.ended[1]
    (key,) = sink.final_status()
    assert sorted(sink.epochs[key]) == [1, 2]  # nothing was written after the failed write
    assert sink.final_status()[key] in {"running", "failed"}


@pytest.mark.slow
def test_a_database_down_for_a_while_loses_nothing_and_fails_nothing(ray_session, tmp_path):
    def goes_down(sink: RecordingSink, key: str, epoch: int, metrics) -> None:
        if epoch == 2 and not sink.down_since:
            sink.down_for(3.0)  # the writes of the next 3 s find the database unreachable

    spec = digits_spec({"optim.lr": [0.05, 0.1]}, method="grid", epochs=40, max_concurrent=1)
    sink = RecordingSink(on_epoch=goes_down)
    _, status = sweep(spec, sink, tmp_path)

    assert sink.down_since, "the outage never happened"
    assert status == "completed", sink.ended
    assert set(sink.final_status().values()) == {"completed"}
    assert {k: sorted(e) for k, e in sink.epochs.items()} == {
        k: list(range(1, 41)) for k in sink.final_status()
    }
