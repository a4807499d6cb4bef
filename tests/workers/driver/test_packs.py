"""Packed sweeps end to end on a real Ray cluster: every member is a trial of its own, trains
as it would alone, stops early by the rules, and survives a killed worker or driver."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from tests.workers.driver.test_sweep import (
    driver_request,
    journal_epochs,
    kill_driver_when,
    reported_epochs,
    resume,
)
from tests.workers.sweeps import RecordingSink, alive_trial_worker_pids, digits_spec, sweep
from workers.driver.sweep import run_sweep
from workers.events import FINAL_TRIAL_STATUSES, SAMPLES_ARTIFACT
from workers.trial.board import board_name
from workers.trial.pack import PACK_FILE, SCRATCH


def _by_params(sink: RecordingSink, names: list[str]) -> dict[tuple[Any, ...], int]:
    return {tuple(sink.last_update(k).params[n] for n in names): k for k in sink.final_status()}


def _packs(sink: RecordingSink) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for key in sink.final_status():
        out.setdefault(sink.last_update(key).pack, set()).add(key)
    return out


@pytest.mark.slow
def test_packed_members_train_as_they_would_alone(ray_session, tmp_path) -> None:
    params = {
        "optim.lr": [0.03, 0.1],
        "model.dropout": [0.0, 0.2],
        "augment.hflip_p": [0.0, 0.5],
        "optim.momentum": 0.9,
        "model.norm": "batch",
    }
    kw: dict[str, Any] = {"method": "grid", "epochs": 3}
    packed_spec = digits_spec(params, max_concurrent=1, **kw)  # one pack of all 8
    alone_spec = digits_spec(params, packing={"enabled": False}, **kw)
    packed, alone = RecordingSink(), RecordingSink()
    uid, status = sweep(packed_spec, packed, tmp_path / "packed")
    assert status == "completed"
    assert sweep(alone_spec, alone, tmp_path / "alone")[1] == "completed"

    names = list(params)
    packed_keys, alone_keys = _by_params(packed, names), _by_params(alone, names)
    assert len(packed_keys) == len(alone_keys) == 8
    assert len(_packs(packed)) == 1
    assert len(_packs(alone)) == 8  # packing off: packs of one, on the same path
    assert packed_keys == alone_keys  # the same numbered trials, whatever the packing
    for combo, key in packed_keys.items():
        mine, theirs = packed.epochs[key], alone.epochs[alone_keys[combo]]
        assert sorted(mine) == sorted(theirs) == [1, 2, 3]
        for epoch in mine:
            for name in ("train_loss", "val_loss"):
                assert math.isclose(mine[epoch][name], theirs[epoch][name], rel_tol=1e-5)
            assert mine[epoch]["val_accuracy"] == theirs[epoch]["val_accuracy"], (combo, epoch)
        assert packed.last_update(key).run_name == alone.last_update(alone_keys[combo]).run_name
    assert sorted(k for k, p, _ in packed.artifacts if p == SAMPLES_ARTIFACT) == sorted(
        packed_keys.values()
    )  # one picture per member
    # Retention keeps the best member's pack's last checkpoint, which holds its final state.
    (kept,) = (tmp_path / "packed" / f"sweep-{uid}").glob("*/checkpoint_*/pack_state.pt")
    state = torch.load(kept, weights_only=True)
    assert packed.ended is not None and packed.ended[2] is not None
    best = packed.ended[2]
    final = state["ended"][str(best)]["checkpoint"]
    assert final["epoch"] == 3
    assert final["history"][-1]["val_accuracy"] == packed.epochs[best][3]["val_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("packs", [1, 2])  # within one pack, or across two, one after another
def test_asha_stops_members_of_packs(packs, ray_session, tmp_path):
    # One pack at a time, good learning rates first: the bad ones meet full rungs and stop.
    spec = digits_spec(
        {"optim.lr": [0.1, 0.2, 0.15, 1e-5, 2e-5, 3e-5]},
        method="grid",
        epochs=4,
        max_concurrent=1,
        packing={"max_members": 6 // packs},
        early_stopping={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "completed"
    assert len(_packs(sink)) == packs
    by_lr = _by_params(sink, ["optim.lr"])
    statuses = {lr: sink.final_status()[key] for (lr,), key in by_lr.items()}
    assert statuses[(0.1)] == "completed" or statuses[0.2] == "completed"
    stopped = [lr for lr in (1e-5, 2e-5, 3e-5) if statuses[lr] == "stopped"]
    assert stopped, statuses
    for lr in stopped:
        assert len(sink.epochs[by_lr[(lr,)]]) < 4
        assert "stopped early" in sink.last_update(by_lr[(lr,)]).message


@pytest.mark.slow
def test_a_diverging_member_leaves_its_packmates_alone(ray_session, tmp_path):
    spec = digits_spec(
        {"optim.lr": [10.0, 0.05]},
        method="grid",
        model={"arch": "mlp", "width": 256, "depth": 3},
        epochs=2,
        max_concurrent=1,
    )
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "completed"
    assert len(_packs(sink)) == 1
    by_lr = _by_params(sink, ["optim.lr"])
    assert sink.last_update(by_lr[(10.0,)]).status == "diverged"
    assert sink.final_status()[by_lr[(0.05,)]] == "completed"
    assert sorted(sink.epochs[by_lr[(0.05,)]]) == [1, 2]
    assert sink.ended is not None and sink.ended[2] == by_lr[(0.05,)]


@pytest.mark.slow
def test_a_killed_pack_resumes_every_member(ray_cluster, ray_session, tmp_path):
    killed: list[int] = []

    def kill_on_epoch_2(sink: RecordingSink, number: int, epoch: int, metrics) -> None:
        if epoch == 2 and not killed:
            pids = alive_trial_worker_pids(ray_cluster.address)
            assert len(pids) == 1, pids  # one pack: its worker
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    epochs = 60
    lrs = [0.02, 0.05, 0.1]
    spec = digits_spec({"optim.lr": lrs}, method="grid", epochs=epochs, max_concurrent=1)
    sink = RecordingSink(on_epoch=kill_on_epoch_2)
    _, status = sweep(spec, sink, tmp_path)

    assert killed, "the worker was never killed"
    assert status == "completed"
    assert len(sink.final_status()) == 3 and len(_packs(sink)) == 1
    for key in sink.final_status():
        last = sink.last_update(key)
        assert last.status == "completed" and last.attempt >= 2, last
        assert sorted(sink.epochs[key]) == list(range(1, epochs + 1))
    pictures = sorted(k for k, path, _ in sink.artifacts if path == SAMPLES_ARTIFACT)
    assert pictures == sorted(sink.final_status())  # once each: not again on the resume
    # the killed worker's checkpoint folder went when the retried pack started
    assert not Path(tempfile.gettempdir(), SCRATCH, str(killed[0])).exists()


@pytest.mark.slow
def test_a_sweep_resumes_after_its_driver_was_killed(ray_cluster, ray_session, tmp_path):
    epochs = 40  # seconds of training: Tune snapshots its state (every 2 s) before the kill
    spec = digits_spec(
        {"optim.lr": [0.02, 0.05, 0.1, 0.2]}, method="grid", epochs=epochs, max_concurrent=1
    )
    request = driver_request(spec, tmp_path)
    epochs_file = Path(request["epochs_file"])
    storage = Path(request["storage_path"], f"sweep-{request['sweep_uid']}")

    def reached_2() -> bool:  # and Tune's state is on storage: resumed, not started over
        snapshot = any(storage.glob("experiment_state-*.json"))
        return snapshot and any(max(e) >= 2 for e in reported_epochs(epochs_file).values())

    kill_driver_when(ray_cluster.address, request, tmp_path, reached_2, "no trial reached epoch 2")
    assert len(reported_epochs(epochs_file)) == 4  # the trials train together

    status, sink = resume(spec, request)

    assert status == "completed", sink.ended
    statuses = sink.final_status()
    assert statuses == dict.fromkeys([1, 2, 3, 4], "completed"), sink.updates
    for number, reports in journal_epochs(request).items():
        assert sorted(set(reports)) == list(range(1, epochs + 1)), number
        assert sorted(sink.epochs[number]) == list(range(1, epochs + 1))


@pytest.mark.slow
def test_a_resume_never_trains_a_trial_that_had_ended(ray_cluster, ray_session, tmp_path):
    """The driver is killed right after ASHA stopped a trial, before Tune's state knows: the
    resumed driver takes the trial's end from the sink, and it reports no epoch after it."""
    epochs = 60
    spec = digits_spec(
        {"optim.lr": [0.1, 0.2, 1e-5, 2e-5]},
        method="grid",
        epochs=epochs,
        max_concurrent=1,
        early_stopping={"type": "asha", "grace_period": 4, "reduction_factor": 2},
    )
    request = driver_request(spec, tmp_path)
    journal = Path(request["journal"])
    storage = Path(request["storage_path"], f"sweep-{request['sweep_uid']}")

    def stopped() -> bool:
        snapshot = any(storage.glob("experiment_state-*.json"))
        return snapshot and '"status": "stopped"' in (
            journal.read_text() if journal.exists() else ""
        )

    kill_driver_when(ray_cluster.address, request, tmp_path, stopped, "no trial was stopped")
    ended_before = {
        n: s for n, s in RecordingSink.replay(journal).final_status().items() if s == "stopped"
    }
    assert ended_before

    status, sink = resume(spec, request)

    assert status == "completed", sink.ended
    for number in ended_before:  # still stopped, and nothing stored after its end
        assert sink.final_status()[number] == "stopped"
    ended: set[int] = set()
    for line in journal.read_text().splitlines():  # both drivers' reports, in order
        kind, data = json.loads(line)
        if kind == "update" and data["status"] in FINAL_TRIAL_STATUSES:
            ended.add(data["number"])
        elif kind == "epoch":
            assert data["number"] not in ended, f"an epoch after the trial's end: {data}"
    assert ended == {1, 2, 3, 4}


@pytest.mark.slow
def test_bayes_asks_its_batches_in_packs_and_numbers_every_trial(ray_session, tmp_path):
    params = {
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.3},
        "model.dropout": [0.0, 0.2],
    }
    spec = digits_spec(params, method="bayes", max_trials=8, epochs=2, max_concurrent=1)
    sink = RecordingSink()
    _, status = sweep(spec, sink, tmp_path)

    assert status == "completed"
    statuses = sink.final_status()
    assert statuses == dict.fromkeys(range(1, 9), "completed")
    packs = _packs(sink)
    assert len(packs) == 8  # batches of one (8 trials / 8 rounds), each its own pack
    lrs = {sink.last_update(k).params["optim.lr"] for k in statuses}
    assert len(lrs) == 8  # each trial its own draw


@pytest.mark.slow
def test_a_resumed_bayes_sweep_draws_the_trials_it_would_have_drawn(
    ray_cluster, ray_session, tmp_path
):
    """The study's state is the trials' records: a driver killed after a few Bayesian batches
    and resumed from what the sink holds draws the same later trials as a sweep never
    interrupted."""
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0}}
    spec = digits_spec(params, method="bayes", max_trials=8, epochs=4, max_concurrent=1)
    request = driver_request(spec, tmp_path / "killed")
    journal = Path(request["journal"])

    def three_ended() -> bool:
        ended = set()
        for line in journal.read_text().splitlines() if journal.exists() else []:
            with contextlib.suppress(ValueError):  # a line being written
                kind, data = json.loads(line)
                if kind == "update" and data["status"] in FINAL_TRIAL_STATUSES:
                    ended.add(data["number"])
        return len(ended) >= 3

    (tmp_path / "killed").mkdir()
    kill_driver_when(ray_cluster.address, request, tmp_path / "killed", three_ended, "3 trials")
    status, resumed = resume(spec, request)
    assert status == "completed", resumed.ended

    whole = RecordingSink()
    assert sweep(spec, whole, tmp_path / "whole")[1] == "completed"
    numbers = list(range(1, 9))
    assert sorted(resumed.final_status()) == sorted(whole.final_status()) == numbers
    lr = lambda sink, n: sink.last_update(n).params["optim.lr"]  # noqa: E731
    assert [lr(resumed, n) for n in numbers] == [lr(whole, n) for n in numbers]
    assert len({lr(whole, n) for n in numbers}) == 8


@pytest.mark.slow
def test_a_killed_stopping_board_restarts_seeded_and_the_sweep_goes_on(ray_session, tmp_path):
    # One pack at a time, good learning rates first; the board is killed while the first pack
    # trains, so the second pack is judged by the restarted board, seeded by the driver.
    killed: list[bool] = []

    def kill_board(sink: RecordingSink, number: int, epoch: int, metrics) -> None:
        if epoch == 20 and not killed:
            board = ray.get_actor(board_name(uid[0]))
            ray.kill(board, no_restart=False)
            killed.append(True)

    uid = ["bd" + os.urandom(3).hex()]
    spec = digits_spec(
        {"optim.lr": [0.1, 0.2, 0.15, 1e-5, 2e-5, 3e-5]},
        method="grid",
        epochs=200,
        max_concurrent=1,
        packing={"max_members": 3},
        early_stopping={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    sink = RecordingSink(on_epoch=kill_board)
    status = run_sweep(spec, sink, sweep_uid=uid[0], storage_path=str(tmp_path))

    assert killed and status == "completed", sink.ended
    by_lr = _by_params(sink, ["optim.lr"])
    for lr in (1e-5, 2e-5, 3e-5):  # judged against the first pack's curves, seeded again
        number = by_lr[(lr,)]
        assert sink.final_status()[number] == "stopped"
        assert max(sink.epochs[number]) < 8, (lr, sorted(sink.epochs[number]))


@pytest.mark.slow
def test_a_running_pack_keeps_a_few_checkpoints_whatever_its_epochs(ray_session, tmp_path):
    on_storage: list[int] = []

    def measure(sink: RecordingSink, number: int, epoch: int, metrics) -> None:
        if number == 1:
            on_storage.append(_bytes_under(tmp_path))

    epochs = 100
    spec = digits_spec(
        {"optim.lr": [0.01 * (i + 1) for i in range(16)]},
        method="grid",
        epochs=epochs,
        max_concurrent=1,
        packing={"max_members": 16},
    )
    uid, status = sweep(spec, RecordingSink(on_epoch=measure), tmp_path)

    assert status == "completed"
    (kept,) = (tmp_path / f"sweep-{uid}").glob(f"*/checkpoint_*/{PACK_FILE}")
    one = kept.stat().st_size  # a pack checkpoint: all 16 trials' states
    assert len(on_storage) == epochs
    assert max(on_storage) < 8 * one, (max(on_storage), one)  # per-epoch ones: 100 x


def _bytes_under(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:  # pruned meanwhile
            continue
    return total
