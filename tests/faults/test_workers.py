"""F1, F2: trial workers and worker nodes die mid-sweep; every trial still finishes, each epoch
once in the database and in MLflow."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.faults.components import trial_workers, trial_workers_of, workers_of
from tests.faults.service import (
    assert_curves_complete,
    assert_mlflow_matches,
    in_process,
    long_body,
)
from tests.service.helpers import make_settings, wait_for

pytestmark = pytest.mark.slow


def test_f1_a_trial_worker_killed_three_times_loses_no_epoch(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    # Both trials train in one pack, one worker: each kill retries both.
    epochs = 150
    settings = make_settings(tmp_path, ray_cluster, mlflow_server)
    body = long_body(epochs, [0.02, 0.05], max_concurrent=1, max_failures=3)
    with in_process(settings) as api:
        sweep_id = api.submit(body)
        killed: list[int] = []
        seen = api.wait_epochs(sweep_id, 5)
        while len(killed) < 3:  # each kill once a trial has trained on since the last one
            seen = api.wait_epochs(sweep_id, seen + 10)
            wait_for(lambda: api.trials(sweep_id), _one_trains, 120, "a trial mid-training")
            pids = wait_for(
                lambda: [p for p in trial_workers(ray_cluster.temp_dir) if p not in killed],
                bool,
                60,
                "its worker",
            )
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        sweep = api.wait_final(sweep_id, timeout=600)
        assert sweep["status"] == "completed", sweep
        api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert sum(t["attempts"] - 1 for t in trials) == 3 * 2  # three retries of both
    assert len({t["pack"] for t in trials}) == 1
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def test_f2_a_worker_node_killed_mid_sweep_has_its_trials_rescheduled(
    tmp_path: Path, private_ray: Any, mlflow_server: Any
) -> None:
    cluster = private_ray(1)  # the head trains one trial; the second node the other
    node = cluster.add_node(1)
    epochs = 150
    settings = make_settings(tmp_path, cluster, mlflow_server)
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(epochs, [0.02, 0.05], max_concurrent=2))
        # The head's trial may end before the node's worker has started (a cold start on a
        # loaded machine): what counts is a trial training while the node holds one.
        wait_for(
            lambda: (trial_workers_of(node), api.trials(sweep_id)),
            lambda seen: bool(seen[0]) and _one_trains(seen[1], epochs),
            240,
            "a trial training on the second node",
        )
        for pid in workers_of(node):
            os.kill(pid, signal.SIGKILL)  # the machine is gone, with the trial it trained
        os.killpg(node.pid, signal.SIGKILL)
        sweep = api.wait_final(sweep_id, timeout=600)
        assert sweep["status"] == "completed", sweep
        api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert max(t["attempts"] for t in trials) >= 2  # the node's trial ran again, on the head
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def _one_trains(trials: list[dict[str, Any]], epochs: int = 150) -> bool:
    """A trial is training with at least 30 epochs still to go."""
    return any(t["status"] == "running" and 0 < len(t["curve"]) < epochs - 30 for t in trials)
