"""Two API processes on one database (``uvicorn --workers 2``, a rolling update): both serve,
one at a time runs the background work (the lease), and it moves when that one stops. On a
real Ray cluster, MLflow server and database."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from service.dispatch.standby import ZYGOTE_PREFIX
from tests.faults.service import Service, assert_mlflow_matches, in_process
from tests.service.helpers import make_settings, wait_for
from tests.specs import digits_body

pytestmark = pytest.mark.slow


def test_two_apis_on_one_database_run_each_sweep_once_and_hand_over_when_one_stops(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    settings = make_settings(tmp_path, ray_cluster, mlflow_server, lease_seconds=3)
    body = digits_body({"optim.lr": [0.05, 0.1]}, method="grid")
    with contextlib.ExitStack() as first_up, contextlib.ExitStack() as second_up:
        apis = {
            first_up: first_up.enter_context(in_process(settings)),
            second_up: second_up.enter_context(in_process(settings)),
        }
        held = lambda: [s for s, api in apis.items() if api.client.app.state.lease.held]  # noqa: E731
        holders = wait_for(held, lambda h: len(h) == 1, 30, "one holder")
        ids = [api.submit(body) for api in apis.values()]
        for sweep_id in ids:
            _check_completed(apis[first_up], sweep_id, mlflow_server.uri)
        zygotes = _zygote_processes(settings.database_url_file)
        assert len(zygotes) == 2, zygotes  # the holder's driver and worker zygotes, no more
        assert held() == holders

        holders[0].close()  # the holder stops (and lets go of the lease)
        other = next(api for up, api in apis.items() if up is not holders[0])
        wait_for(lambda: other.client.app.state.lease.held, bool, 30, "the other to take over")
        _check_completed(other, other.submit(body), mlflow_server.uri)


def _check_completed(api: Service, sweep_id: int, mlflow_uri: str) -> None:
    sweep = api.wait_final(sweep_id, timeout=300)
    assert sweep["status"] == "completed", sweep["message"]
    sweep = api.wait_tracked(sweep_id)
    assert_mlflow_matches(mlflow_uri, sweep, api.trials(sweep_id))


def _zygote_processes(database_url_file: Path) -> set[str]:
    """The zygote jobs whose processes run on this test's database (their command lines name
    their job)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        if f"SWEEPS_DATABASE_URL_FILE={database_url_file}".encode() in env:
            found |= {a for a in args.decode().split("\0") if a.startswith(ZYGOTE_PREFIX)}
    return found
