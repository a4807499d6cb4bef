"""The soak (:mod:`tests.soak.run`) on the compose stack, before the other deployment tests and
on a stack of its own: its containers stopped and started, its processes killed or paused from
the host (``docker top`` gives their host pids), the resource table read from the engine."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.stack import HEALTHY_WITHIN, Stack, build_images, run
from tests.soak.gauges import disk_mb, long_lived, open_files, pss_mb
from tests.soak.run import SEED, Action, one_of, soak

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(0)]

TRIAL = re.compile(r"^ray::ImplicitFunc")
DRIVER = re.compile(r"-m service\.job( |$)")
DASHBOARD = re.compile(r"dashboard/dashboard\.py")
BACKLOG_SQL = (
    "SELECT (SELECT count(*) FROM sweeps WHERE NOT mlflow_done)"
    " + (SELECT count(*) FROM trial_artifacts WHERE NOT sent)"
)
JOBS_PY = (
    "import json, os, urllib.request as u; "
    "r = u.Request('http://127.0.0.1:8265/api/jobs/', "
    "headers={'Authorization': 'Bearer ' + os.environ['RAY_AUTH_TOKEN']}); "
    "print(len(json.load(u.urlopen(r, timeout=5))))"
)


def test_the_compose_stack_survives_random_overlapping_faults_losing_nothing_flat(
    tmp_path: Path,
) -> None:
    build_images()
    stack = Stack(tmp_path, SWEEPS_MAX_OPEN_SWEEPS="6", SWEEPS_MAX_RESUMES="50")
    try:
        stack.up("--scale", "ray-worker=2")
        rng = random.Random(SEED)
        mlflow_uri = f"http://127.0.0.1:{stack.env.values['SWEEPS_MLFLOW_PORT']}"
        soak(tmp_path, rng, _actions(stack, rng), lambda: _read(stack), stack.api, mlflow_uri)
    finally:
        stack.teardown()


def _actions(stack: Stack, rng: random.Random) -> dict[str, Action]:
    def one(service: str) -> dict[str, Any]:
        return stack.project.containers(service)[-1]

    def stopped(service: str) -> tuple[str, Callable[[], None]]:
        """The service's (last) container stopped at once (SIGKILL), started again after."""
        c = one(service)
        run("docker", "stop", "-t", "0", c["Id"])
        return c["Name"], lambda: _start(stack, c)

    def paused_dashboard() -> tuple[str, Callable[[], None]]:
        pid = min(_pids(one("ray-head"), DASHBOARD))  # the dashboard, not its subprocesses
        os.kill(pid, signal.SIGSTOP)
        return f"dashboard pid {pid}", lambda: os.kill(pid, signal.SIGCONT)

    def in_(service: str, pattern: re.Pattern[str]) -> Callable[[], list[int]]:
        return lambda: [p for c in stack.project.containers(service) for p in _pids(c, pattern)]

    return {
        "trial_worker": lambda: one_of(rng, in_("ray-worker", TRIAL), "trial worker"),
        # A sweep job's driver, or a standby (which may be driving a sweep by now).
        "driver": lambda: one_of(rng, in_("ray-head", DRIVER), "driver"),
        "api": lambda: stopped("api"),
        "mlflow": lambda: stopped("mlflow"),
        "postgres": lambda: stopped("postgres"),
        "ray_node": lambda: stopped("ray-worker"),
        "dashboard": paused_dashboard,
    }


def _start(stack: Stack, container: dict[str, Any]) -> None:
    run("docker", "start", container["Id"])
    service = container["Config"]["Labels"]["com.docker.compose.service"]
    stack.project.wait_healthy(HEALTHY_WITHIN, service)


def _pids(container: dict[str, Any], pattern: re.Pattern[str] | None = None) -> list[int]:
    """Host pids of the container's processes (whose command line matches ``pattern``)."""
    top = run("docker", "top", container["Id"], "-eo", "pid,args", check=False)
    rows = [line.strip().split(None, 1) for line in top.splitlines()[1:]]
    return [
        int(r[0])
        for r in rows
        if r and r[0].isdigit() and (pattern is None or pattern.search(r[-1]))
    ]


def _read(stack: Stack) -> dict[str, float | None]:
    """One row of the resource table, from the engine and the host's /proc."""
    containers = stack.project.containers()
    name = {c["Id"]: c["Config"]["Labels"]["com.docker.compose.service"] for c in containers}
    pids = {c["Id"]: _pids(c) for c in containers if c["State"]["Running"]}
    every = [p for ps in pids.values() for p in ps]
    label = f"label=com.docker.compose.project={stack.name}"
    volumes = run("docker", "volume", "ls", "-q", "--filter", label).split()
    mounts = [run("docker", "volume", "inspect", "-f", "{{.Mountpoint}}", v) for v in volumes]
    temps = [
        Path(c["GraphDriver"]["Data"]["UpperDir"]) / "tmp" / "ray"
        for c in containers
        if name[c["Id"]] in ("ray-head", "ray-worker")
    ]
    of = lambda service: [p for c, ps in pids.items() if name[c] == service for p in ps]  # noqa: E731
    sql = ("psql", "-h", "127.0.0.1", "-U", "sweeps", "-d", "sweeps", "-tAc", BACKLOG_SQL)
    return {
        "processes": len(every),
        "open_files": open_files(every),
        "api_pss_mb": pss_mb(of("api")) or None,
        "head_pss_mb": pss_mb(long_lived(of("ray-head"))) or None,
        "state_mb": disk_mb(*(Path(m.strip()) for m in mounts)),
        "ray_temp_mb": disk_mb(*temps),
        "ray_jobs": _number(stack, "ray-head", "python", "-c", JOBS_PY),
        "journal_backlog": _number(stack, "postgres", *sql),
    }


def _number(stack: Stack, service: str, *cmd: str) -> float | None:
    """What ``cmd`` prints in the service's running container, or None (down, or no answer)."""
    found = [c for c in stack.project.containers(service) if c["State"]["Running"]]
    if not found:
        return None
    try:
        return float(run("docker", "exec", found[0]["Id"], *cmd, check=False, timeout=20))
    except (ValueError, subprocess.TimeoutExpired):
        return None
