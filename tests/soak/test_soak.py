"""``make soak``: one embedded stack (a private PostgreSQL, MLflow server and Ray cluster of a
head and a worker node, the API as its own process) takes sweeps of mixed methods, sizes and
early stopping for ``SOAK_MINUTES`` (5 in ``make test``; ``SOAK_MINUTES=60 make soak`` for the
long run) while a seeded fault injector (``SOAK_SEED``) kills or pauses its parts at random.
Afterwards every sweep is final, every trial's epochs are in the database and in MLflow exactly
once, no MLflow run is left RUNNING, and the resource table over time is flat. The table and the
fault log are written beside the test's files (and the table printed)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from service.cli.stack import free_port
from tests.faults.components import (
    PrivateMlflow,
    PrivatePostgres,
    PrivateRay,
    workers_of,
)
from tests.faults.service import Service, assert_mlflow_matches
from tests.service.helpers import Api, make_settings
from tests.soak.faults import KINDS, Injector, kill, naming
from tests.soak.gauges import Gauges, disk_mb, open_files, rss_mb
from tests.specs import digits_body
from workers.errors import RayJobsError
from workers.events import FINAL_SWEEP_STATUSES
from workers.jobs import RayJobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0)]
MINUTES = float(os.environ.get("SOAK_MINUTES", "5"))
SEED = int(os.environ.get("SOAK_SEED", "22"))
DRAIN_S = 900.0
STALL_S = 120.0
"""How long the stack may run no trial (or no driver) while sweeps are open: several faults
overlapping (the API, PostgreSQL and the Jobs API each down up to 15 s, every standby killed)
hold dispatch up for tens of seconds on a loaded machine; minutes would be a stall."""
SLACK: dict[str, float] = {
    "processes": 10, "open_files": 150, "ray_jobs": 6, "journal_backlog": 6,
}  # fmt: skip
"""Absolute allowances on top of 10% for series that count things in flight: up to one batch
of open sweeps (6, the API's limit here) more, with their processes and files, or finished but
not yet in MLflow after an outage."""
UNBOUNDED = {"ray_temp_mb", "state_mb"}
"""Series shown but not judged: the state folder grows with the data the stack keeps (database
rows, MLflow runs and pictures, each sweep's best checkpoint: retention's own tests judge what
stays); Ray writes log files per job and per worker process into its session folder and never
removes them (the worker zygote deletes its dead workers' files but for the newest 200; a known
limit, ARCHITECTURE.md)."""
AFTER_DRAIN = {"journal_backlog", "ray_jobs"}
"""Series judged by where the drain leaves them, not by their quarters: in a few minutes one
MLflow or API outage in the last quarter holds the MLflow backlog, and the Ray jobs that wait
for it, up; what must hold is that nothing stays behind (backlog 0, no more jobs than the
standbys and zygotes of the first quarter)."""


def _body(rng: random.Random, n: int) -> dict[str, Any]:
    """A small sweep: grid, random with ASHA or the median rule, or bayes; 1-4 trials of 1-4
    epochs."""
    lr = {"distribution": "log_uniform_values", "min": 0.01, "max": 0.3}
    kind = rng.choice(["grid", "asha", "median", "bayes"])
    epochs = rng.randint(1, 4)
    if kind == "grid":
        body = digits_body({"optim.lr": rng.sample([0.03, 0.1, 0.2, 0.3], rng.randint(1, 3))})
        body |= {"method": "grid"}
    else:
        body = digits_body({"optim.lr": lr}, method="bayes" if kind == "bayes" else "random")
        body |= {"max_trials": rng.randint(2, 4), "seed": rng.randrange(1000)}
    if kind in ("asha", "median"):
        stop = {"type": kind, "grace_period": 1}
        body["early_stopping"] = stop | ({"min_samples_required": 2} if kind == "median" else {})
    return body | {"name": f"soak-{n}-{kind}", "epochs": epochs, "max_failures": 10}


class Submitter:
    """Submits a sweep every ``every`` seconds through the API, retrying one request (same
    Idempotency-Key) through outages and 429s until it is stored: the API's limit on open
    sweeps (6 here) keeps the stack busy, never drowning."""

    def __init__(self, http: httpx.Client, rng: random.Random, every: float = 1.0) -> None:
        self.http, self.rng, self.every = http, rng, every
        self.ids: list[int] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-submit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            body, key = _body(self.rng, len(self.ids) + 1), uuid.uuid4().hex
            while not self._stop.is_set():
                try:
                    r = self.http.post("/sweeps", json=body, headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    time.sleep(1)
                    continue
                if r.status_code in (200, 201):
                    self.ids.append(int(r.json()["id"]))
                    break
                if r.status_code == 429 or r.status_code >= 500:
                    time.sleep(1)
                    continue
                self.refused.append(f"{r.status_code}: {r.text[:300]}")
                break


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
            heartbeat_seconds=2, stuck_after_seconds=30, ray_grace_seconds=120,
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

    def one_of(find: Any, what: str) -> tuple[str, Any]:
        """SIGKILL one of ``find()``, waiting up to :data:`STALL_S` for one to run (none for
        that long while sweeps are open is a stall, reported as the fault's error)."""
        deadline = time.monotonic() + STALL_S
        while not (pids := find()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} ran for {STALL_S:.0f} s")
            time.sleep(0.2)
        pid = rng.choice(pids)
        kill(pid)
        return f"{what} pid {pid}", None

    def restarted(stop: Any, start: Any, what: str) -> tuple[str, Any]:
        stop()
        return what, start

    marker = str(url_file).encode()
    actions = {
        # Every process of the cluster names its token file (under root) in its environment.
        "trial_worker": lambda: one_of(
            lambda: naming(str(root).encode(), cmdline_has=b"ray::ImplicitFunc"), "trial worker"
        ),
        # A sweep job's driver, or a standby (which may be driving a sweep by now).
        "driver": lambda: one_of(lambda: naming(marker, cmdline_has=b"service.job\0"), "driver"),
        "api": lambda: restarted(api.kill, api.start, "api"),
        "mlflow": lambda: restarted(mlflow.stop, mlflow.start, "mlflow"),
        "postgres": lambda: restarted(pg.stop, pg.start, "postgres"),
        "ray_node": node_down,
        "dashboard": paused_dashboard,
    }
    assert set(actions) == set(KINDS)
    injector = Injector(actions, rng, root / "faults.jsonl")
    gauges = Gauges(lambda: _read(root, pg, ray, api))
    submitter = Submitter(api.http, rng)
    gauges.start()
    submitter.start()
    injector.start()
    time.sleep(MINUTES * 60)
    gauges.drained()
    submitter.stop()
    injector.stop()
    service = Service(api.http)
    deadline = time.monotonic() + DRAIN_S
    open_ids = set(submitter.ids)
    while open_ids and time.monotonic() < deadline:
        for sweep_id in sorted(open_ids):
            with contextlib.suppress(httpx.HTTPError, AssertionError):
                s = service.sweep(sweep_id)
                if s["status"] in FINAL_SWEEP_STATUSES and s["mlflow_pending"] == 0:
                    open_ids.discard(sweep_id)
        time.sleep(2)
    gauges.stop()
    (root / "soak.md").write_text(gauges.table() + "\n")
    print(f"\nsoak: {MINUTES:g} min, seed {SEED}, {len(submitter.ids)} sweeps, "
          f"{len(injector.faults)} faults\n{gauges.table()}")  # fmt: skip

    assert not open_ids, f"not final and tracked after the drain: {sorted(open_ids)}"
    assert not submitter.refused, submitter.refused[:3]
    assert not injector.errors, injector.errors
    assert {f.kind for f in injector.faults} == set(KINDS), injector.faults
    assert injector.overlaps(), "no two faults overlapped"
    statuses = []
    for sweep_id in submitter.ids:
        sweep = service.sweep(sweep_id)
        trials = service.trials(sweep_id)
        statuses.append(sweep["status"])
        for trial in trials:
            done = [p["epoch"] for p in trial["curve"]]
            assert done == list(range(1, len(done) + 1)), (sweep_id, trial["key"], done)
        assert_mlflow_matches(mlflow.uri, sweep, trials)
    client = MlflowClient(mlflow.uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", ViewType.ALL)
    assert not running, [r.info.run_id for r in running]
    grew = {k: v for k, v in gauges.not_flat(SLACK).items() if k not in UNBOUNDED | AFTER_DRAIN}
    assert not grew, f"series that grew: {grew}"
    last, first = gauges.rows[-1], gauges.rows[: max(1, gauges.load_rows // 4)]
    assert last["journal_backlog"] == 0, last
    started = max(r["ray_jobs"] or 0 for r in first)
    assert last["ray_jobs"] is not None and last["ray_jobs"] <= started, (last, started)
    assert statuses.count("completed") >= len(statuses) // 2, statuses


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
        "api_rss_mb": rss_mb([api.proc.pid]) if api.proc and api.proc.poll() is None else None,
        "head_rss_mb": rss_mb(head),
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
