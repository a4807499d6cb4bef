"""What both soaks share (the embedded stack's, ``tests/soak``, and the compose stack's,
``tests/deploy``): the load, sweeps of mixed methods, sizes and early stopping submitted
through the API; the run, ``SOAK_MINUTES`` of load, seeded faults and the resource table (5 in
CI; ``SOAK_MINUTES=60`` for the long run), judged once :data:`WARMUP_S` of them passed, then the
drain; and the verdict: every sweep final, every trial's epochs in the database and in MLflow
exactly once, no MLflow run left RUNNING, the table flat. The table and the fault log are written
under the test's folder (the table printed)."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.faults.service import Service, assert_mlflow_matches
from tests.soak.faults import KINDS, Injector, kill
from tests.soak.gauges import Gauges
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES

Action = Callable[[], tuple[str, Callable[[], None] | None]]

MINUTES = float(os.environ.get("SOAK_MINUTES", "5"))
SEED = int(os.environ.get("SOAK_SEED", "22"))
DRAIN_S = 900.0
WARMUP_S = 90.0
"""The first seconds of ``SOAK_MINUTES``, not judged: the standbys, zygotes and Ray's idle
workers start, open sweeps reach the API's limit, every kind of fault fires once."""
WAIT_S = 60.0
"""How long a kill waits for a trial worker or a driver to run: outages overlapping (the API
and PostgreSQL down, the Jobs API paused) hold dispatch up for a minute or two on a loaded
machine, the compose stack's longer (a container back to healthy takes 30-140 s)."""
SLACK: dict[str, float] = {
    "processes": 10, "open_files": 150, "ray_jobs": 6, "journal_backlog": 6, "api_pss_mb": 50,
    "head_pss_mb": 150,
}  # fmt: skip
"""Absolute allowances on top of 10%: for series that count things in flight, up to one batch
of open sweeps (6, the API's limit here) more, with their processes and files, or finished but
not yet in MLflow after an outage; for the API's memory, the one-time step of about 50 MB a
restarted API takes when it first draws pictures (a quarter's peak may fall before it); for the
head's, the swing of 100-200 MB from one row to the next seen on the compose head (its driver
zygote's PSS shrinks while forked drivers share its pages, and grows back when they end). A leak
shows in the long run (bench/RESULTS.md)."""
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


def body(rng: random.Random, n: int) -> dict[str, Any]:
    """A small sweep: grid, random with ASHA or the median rule, or bayes; 1-4 trials of 1-4
    epochs."""
    lr = {"distribution": "log_uniform_values", "min": 0.01, "max": 0.3}
    kind = rng.choice(["grid", "asha", "median", "bayes"])
    epochs = rng.randint(1, 4)
    if kind == "grid":
        spec = digits_body({"optim.lr": rng.sample([0.03, 0.1, 0.2, 0.3], rng.randint(1, 3))})
        spec |= {"method": "grid"}
    else:
        spec = digits_body({"optim.lr": lr}, method="bayes" if kind == "bayes" else "random")
        spec |= {"max_trials": rng.randint(2, 4), "seed": rng.randrange(1000)}
    if kind in ("asha", "median"):
        stop = {"type": kind, "grace_period": 1}
        spec["early_stopping"] = stop | ({"min_samples_required": 2} if kind == "median" else {})
    return spec | {"name": f"soak-{n}-{kind}", "epochs": epochs, "max_failures": 10}


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
            spec, key = body(self.rng, len(self.ids) + 1), uuid.uuid4().hex
            while not self._stop.is_set():
                try:
                    r = self.http.post("/sweeps", json=spec, headers={"Idempotency-Key": key})
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


def one_of(rng: random.Random, find: Callable[[], list[int]], what: str) -> tuple[str, Any]:
    """SIGKILL one of ``find()``, waiting up to :data:`WAIT_S` for one to run (none may run
    while outages overlap: the fault is then logged as finding none)."""
    deadline = time.monotonic() + WAIT_S
    while not (pids := find()):
        if time.monotonic() > deadline:
            return f"no {what} ran for {WAIT_S:.0f} s", None
        time.sleep(0.2)
    pid = rng.choice(pids)
    kill(pid)
    return f"{what} pid {pid}", None


def soak(
    root: Path,
    rng: random.Random,
    actions: dict[str, Action],
    read: Callable[[], dict[str, float | None]],
    http: httpx.Client,
    mlflow_uri: str,
) -> None:
    """Run the soak on a stack that is up (see the module): ``actions[kind]()`` injects a
    fault of each of :data:`KINDS`, ``read()`` is one row of the resource table, ``http``
    reaches the API, ``mlflow_uri`` its MLflow server."""
    assert set(actions) == set(KINDS)
    injector = Injector(actions, rng, root / "faults.jsonl")
    gauges = Gauges(read)
    submitter = Submitter(http, rng)
    gauges.start()
    submitter.start()
    injector.start()
    time.sleep(WARMUP_S)
    gauges.warm()
    judged_from, judged = datetime.now(UTC), MINUTES * 60 - WARMUP_S
    time.sleep(judged)
    gauges.drained()
    submitter.stop()
    injector.stop()
    service = Service(http)
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

    def checked(sweep_id: int) -> tuple[str, datetime]:
        """The sweep's status and end, once its epochs and MLflow's runs are checked."""
        sweep = service.sweep(sweep_id)
        trials = service.trials(sweep_id)
        for trial in trials:
            done = [p["epoch"] for p in trial["curve"]]
            assert done == list(range(1, len(done) + 1)), (sweep_id, trial["key"], done)
        assert_mlflow_matches(mlflow_uri, sweep, trials)
        return sweep["status"], datetime.fromisoformat(sweep["ended_at"])

    with ThreadPoolExecutor(4) as pool:  # a minute or more one by one, for the compose stack
        results = list(pool.map(checked, submitter.ids))
    statuses, ended = [r[0] for r in results], [r[1] for r in results]
    client = MlflowClient(mlflow_uri)
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
    half = timedelta(seconds=judged / 2)
    idle = [h for h in (0, 1) if not any(0 <= (e - judged_from) / half - h < 1 for e in ended)]
    assert not idle, f"no sweep ended in half {idle} of the judged minutes: a stall"
