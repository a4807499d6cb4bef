"""``make soak``: the soak (:mod:`tests.soak.run`) on one embedded stack: a private PostgreSQL,
MLflow server and Ray cluster of a head and a worker node, the API as its own process."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.cli.stack import free_port
from tests.faults.components import (
    PrivateMlflow,
    PrivatePostgres,
    PrivateRay,
    workers_of,
)
from tests.service.helpers import Api, make_settings
from tests.soak.faults import kill, naming
from tests.soak.gauges import disk_mb, long_lived, open_files, pss_mb
from tests.soak.run import SEED, one_of, soak
from workers.errors import RayJobsError
from workers.jobs import RayJobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0)]


def test_the_stack_survives_random_overlapping_faults_losing_nothing_with_flat_resources(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    pg, mlflow = PrivatePostgres(tmp_path), PrivateMlflow(tmp_path)
    ray = PrivateRay(tmp_path, 2)
    api: Api | None = None
    try:
        pg.start()
        pg.create_database()
        mlflow.start()
        ray.start()
        ray.add_node(1)
        port = free_port()
        settings = make_settings(
            tmp_path, ray, mlflow, database_url=pg.url, port=port,
            public_url=f"http://127.0.0.1:{port}", warm_drivers=None, max_resumes=50,
            heartbeat_seconds=2, stuck_after_seconds=90, ray_grace_seconds=120,
            monitor_interval_seconds=1, lease_seconds=5, tracking_backoff_seconds=5,
            max_open_sweeps=6,
        )  # fmt: skip
        api = Api(settings, tmp_path / "api.log")
        api.start()
        _soak(tmp_path, rng, pg, mlflow, ray, api, settings.database_url_file)
    finally:
        if api is not None:
            api.kill()
        ray.close()
        mlflow.stop()
        pg.close()


def _soak(
    root: Path,
    rng: random.Random,
    pg: PrivatePostgres,
    mlflow: PrivateMlflow,
    ray: PrivateRay,
    api: Api,
    url_file: Path,
) -> None:
    def node_down() -> tuple[str, Any]:
        node = ray.nodes[-1]
        for pid in workers_of(node):
            kill(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(30)
        return f"node pid {node.pid}", join

    def join() -> None:
        """A new worker node; again with other ports when the harness's free port was taken
        meanwhile (the node then dies at start)."""
        for attempt in range(3):
            try:
                ray.add_node(1)
                return
            except AssertionError:
                if attempt == 2:
                    raise

    def paused_dashboard() -> tuple[str, Any]:
        pid = ray.dashboard()
        os.kill(pid, signal.SIGSTOP)
        return f"dashboard pid {pid}", lambda: os.kill(pid, signal.SIGCONT)

    def restarted(stop: Any, start: Any, what: str) -> tuple[str, Any]:
        stop()
        return what, start

    marker = str(url_file).encode()
    actions = {
        # Every process of the cluster names its token file (under root) in its environment.
        "trial_worker": lambda: one_of(
            rng,
            lambda: naming(str(root).encode(), cmdline_has=b"ray::ImplicitFunc"),
            "trial worker",
        ),
        # A sweep job's driver, or a standby (which may be driving a sweep by now).
        "driver": lambda: one_of(
            rng, lambda: naming(marker, cmdline_has=b"service.job\0"), "driver"
        ),
        "api": lambda: restarted(api.kill, api.start, "api"),
        "mlflow": lambda: restarted(mlflow.stop, mlflow.start, "mlflow"),
        "postgres": lambda: restarted(pg.stop, pg.start, "postgres"),
        "ray_node": node_down,
        "dashboard": paused_dashboard,
    }
    soak(root, rng, actions, lambda: _read(root, pg, ray, api), api.http, mlflow.uri)


def _read(root: Path, pg: PrivatePostgres, ray: PrivateRay, api: Api) -> dict[str, float | None]:
    """One row of the resource table."""
    markers = [str(root).encode(), str(pg.dir).encode(), *(d.encode() for d in ray.temp_dirs)]
    stack = [pid for m in markers for pid in naming(m, cmdline_has=b"")]
    stack = sorted(set(stack) - {os.getpid()})
    head = [pid for pid in stack if _pgid(pid) == (ray.head.pid if ray.head else -1)]
    try:
        jobs: float | None = len(RayJobs(ray.dashboard_url, ray.token, timeout=2).job_ids())
    except RayJobsError:
        jobs = None
    return {
        "processes": len(stack),
        "open_files": open_files(stack),
        "api_pss_mb": pss_mb([api.proc.pid]) if api.proc and api.proc.poll() is None else None,
        "head_pss_mb": pss_mb(long_lived(head)),
        "state_mb": disk_mb(root, pg.dir),
        "ray_temp_mb": disk_mb(*(Path(d) for d in ray.temp_dirs)),
        "ray_jobs": jobs,
        "journal_backlog": _backlog(pg),
    }


def _backlog(pg: PrivatePostgres) -> float | None:
    """Sweeps MLflow does not have all of yet, and pictures not yet sent to it."""
    try:
        with psycopg.connect(
            host="127.0.0.1", port=pg.port, user="postgres", dbname="sweeps", connect_timeout=2
        ) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM sweeps WHERE NOT mlflow_done)"
                " + (SELECT count(*) FROM trial_artifacts WHERE NOT sent)"
            ).fetchone()
    except psycopg.Error:
        return None
    return float(row[0]) if row else None


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1
