"""F6, F7, F8: the Ray head dies and comes back, dies for good, or the sweep's driver hangs;
and a driver killed right after a trial was stopped early."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.service import (
    assert_curves_complete,
    assert_mlflow_matches,
    in_process,
    long_body,
)
from tests.service.helpers import make_settings, mlflow_runs, wait_for

pytestmark = pytest.mark.slow


def test_f6_a_ray_head_killed_and_restarted_resumes_the_sweep_from_storage(
    tmp_path: Path, private_ray: Any, mlflow_server: Any
) -> None:
    cluster = private_ray(2)
    epochs = 100
    settings = make_settings(tmp_path, cluster, mlflow_server, ray_grace_seconds=300)
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(epochs, [0.02, 0.05], max_concurrent=2))
        api.wait_epochs(sweep_id, 20)
        cluster.kill()  # the head, its driver and its trial workers, all at once
        time.sleep(5)
        cluster.start()  # a new head on the same address: it knows no job
        sweep = api.wait_final(sweep_id, timeout=600)
        assert sweep["status"] == "completed", (sweep["message"], sweep["resumes"])
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert sweep["resumes"] == 1 and sweep["ray_job_id"].endswith("-1")  # one new job
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def test_f7_a_ray_head_gone_for_good_fails_the_sweep_naming_ray_and_leaves_nothing_running(
    tmp_path: Path, private_ray: Any, mlflow_server: Any
) -> None:
    cluster = private_ray(2)
    grace = 10.0
    settings = make_settings(tmp_path, cluster, mlflow_server, ray_grace_seconds=grace)
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(100, [0.02, 0.05], max_concurrent=2))
        api.wait_epochs(sweep_id, 5)
        cluster.kill()
        gone = time.monotonic()
        sweep = api.wait_final(sweep_id, timeout=grace + 30)
        assert time.monotonic() - gone < grace + 15  # the grace, and a reconciliation or two
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert sweep["status"] == "failed"
    assert "Ray cluster" in sweep["message"] and "unreachable" in sweep["message"]
    assert trials and {t["status"] for t in trials} == {"failed"}
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)
    _, parents, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    assert "RUNNING" not in {r.info.status for r in [*parents, *children]}


def test_a_ray_dashboard_paused_while_its_gcs_answers_never_fails_the_sweeps_it_runs(
    tmp_path: Path, private_ray: Any, mlflow_server: Any
) -> None:
    """Ray's Jobs API (the dashboard) stops answering past the grace, the GCS answers: the
    driver trains on and the sweep completes, every epoch in the database and in MLflow."""
    cluster = private_ray(2)
    epochs, grace = 300, 3.0
    settings = make_settings(tmp_path, cluster, mlflow_server, ray_grace_seconds=grace)
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(epochs, [0.02, 0.05], max_concurrent=2))
        api.wait_epochs(sweep_id, 4)
        dashboard = cluster.dashboard()
        os.kill(dashboard, signal.SIGSTOP)
        try:
            time.sleep(grace + 15)  # past the grace, and two reconciliations (5 s timeouts)
            assert api.sweep(sweep_id)["status"] == "running", "the sweep ended before the grace"
            sweep = api.wait_final(sweep_id, timeout=600)
        finally:
            os.kill(dashboard, signal.SIGCONT)
        assert sweep["status"] == "completed", sweep["message"]
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def test_f8_a_hung_driver_is_found_by_its_heartbeat_and_replaced(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    epochs = 100
    settings = make_settings(
        tmp_path, ray_cluster, mlflow_server, heartbeat_seconds=1, stuck_after_seconds=8
    )
    with in_process(settings) as api:
        sweep_id = api.submit(long_body(epochs, [0.02, 0.05], max_concurrent=2))
        api.wait_epochs(sweep_id, 5)
        driver = driver_pid(sweep_id, settings.database_url_file)
        os.kill(driver, signal.SIGSTOP)  # alive to Ray, silent to everyone
        try:
            stopped = time.monotonic()
            wait_for(lambda: api.sweep(sweep_id), lambda s: s["resumes"] == 1, 60, "a new job")
            assert time.monotonic() - stopped < 8 + 30
            sweep = api.wait_final(sweep_id, timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(driver, signal.SIGKILL)
        assert sweep["status"] == "completed", (sweep["message"], sweep["resumes"])
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert_curves_complete(trials, epochs)
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def test_f8_a_standby_that_never_starts_its_sweep_is_replaced(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    """A warm driver alive to Ray but frozen (as one that cannot reach its cluster's head)
    is handed a sweep; the sweep must not stay pending forever."""
    settings = make_settings(
        tmp_path, ray_cluster, mlflow_server, heartbeat_seconds=1, stuck_after_seconds=8,
        warm_drivers=1,
    )  # fmt: skip
    with in_process(settings) as api:
        standby = eventually_pid(lambda: driver_pid("--standby", settings.database_url_file))
        os.kill(standby, signal.SIGSTOP)
        try:
            sweep_id = api.submit(long_body(2, [0.05]))
            wait_for(lambda: api.sweep(sweep_id), lambda s: s["resumes"] == 1, 60, "a new job")
            sweep = api.wait_final(sweep_id, timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(standby, signal.SIGKILL)
        assert sweep["status"] == "completed", (sweep["message"], sweep["resumes"])


def test_a_driver_killed_right_after_a_trial_stopped_early_never_revives_it(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    """The resumed driver takes the trial's end from the database: the trial stays stopped,
    with the same curve, no epoch is stored after its end, and MLflow agrees with the
    database for every trial."""
    epochs = 60
    # Each pack of two holds a good and a bad rate, judged in that order at every rung, so the
    # bad one stops whichever pack runs ahead (a pack of the two bad ones, ahead all the way,
    # would meet only its own values at each rung and never stop).
    body = long_body(
        epochs, [0.05, 1e-4, 0.1, 3e-4], max_concurrent=2,
        early_stopping={"type": "asha", "grace_period": 2, "reduction_factor": 2},
    )  # fmt: skip
    settings = make_settings(tmp_path, ray_cluster, mlflow_server)
    with in_process(settings) as api:
        sweep_id = api.submit(body)
        stopped = wait_for(
            lambda: [t for t in api.trials(sweep_id) if t["status"] == "stopped"],
            bool, 240, "a trial stopped early",
        )  # fmt: skip
        os.kill(driver_pid(sweep_id, settings.database_url_file), signal.SIGKILL)
        sweep = api.wait_final(sweep_id, timeout=600)
        assert sweep["status"] == "completed", (sweep["message"], sweep["resumes"])
        sweep = api.wait_tracked(sweep_id)
        trials = api.trials(sweep_id)
    assert sweep["resumes"] == 1
    by_number = {t["number"]: t for t in trials}
    for before in stopped:
        after = by_number[before["number"]]
        assert after["status"] == "stopped" and after["curve"] == before["curve"], after
    for trial in trials:
        assert trial["status"] in {"completed", "stopped"}, trial
        done = [p["epoch"] for p in trial["curve"]]
        assert done == list(range(1, len(done) + 1)), trial["key"]
        assert (len(done) == epochs) == (trial["status"] == "completed"), trial["key"]
    assert_mlflow_matches(mlflow_server.uri, sweep, trials)


def eventually_pid(find: Any, timeout: float = 60) -> int:
    """``find()`` once it stops raising AssertionError (the process has started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(find())
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def driver_pid(sweep_id: int | str, database_url_file: Path) -> int:
    """The process of ``python -m service.job <sweep_id>`` (or ``--standby``) on this test's
    database (its job environment names the test's own database URL file)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        ours = f"SWEEPS_DATABASE_URL_FILE={database_url_file}".encode() in env
        if ours and b"service.job" in args and str(sweep_id).encode() in args:
            return int(entry.name)
    raise AssertionError(f"no driver process for sweep {sweep_id}")
