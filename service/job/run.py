"""The entrypoint of the Ray jobs that drive sweeps.

``python -m service.job <sweep_id> [--resume]`` drives one sweep. ``python -m
service.job --standby <job_id>`` is a warm standby (see :mod:`service.dispatch.standby`): it
imports the driver (Ray Tune, the database), joins the cluster, marks itself ready, then waits
for the dispatcher to hand it a sweep (the sweep's ``ray_job_id`` names this job), drives that
one sweep and exits. A standby whose row disappears without a sweep retires (exit 0).

Either way the job rebuilds the settings from the environment the dispatcher gave it (database
URL, storage path, patience, heartbeat; never the API token), reports through a
:class:`service.job.sink.DatabaseSink` and beats the sweep's heartbeat while it drives. A driver
error, or a database unreachable for longer than ``db_patience_seconds``, leaves the sweep open
and exits non-zero: the API's reconciliation then resumes the sweep from Tune's experiment
state, or fails it once ``max_resumes`` is spent.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.config import Settings, load_settings
from service.errors import StorageError
from service.job.sink import DatabaseSink
from service.store.db import make_engine, make_session_factory, session_scope
from workers.errors import ClusterLostError, SinkUnavailableError
from workers.events import FINAL_SWEEP_STATUSES
from workers.spec import SweepSpec
from workers.warm.trials import SOCKET_ENV as WORKER_SOCKET_ENV
from workers.warm.trials import launch_command

log = logging.getLogger("service.job")
STANDBY_POLL_S = 0.1
"""How often a standby looks for its sweep (one indexed read)."""
STANDBY_DB_PATIENCE_S = 60.0
"""A standby that cannot read the database for this long exits; the API replaces it."""


def main(argv: list[str] | None = None) -> int:
    """Drive one sweep (or wait for one, as a standby); 0 once it has a final status."""
    parser = argparse.ArgumentParser(prog="python -m service.job")
    parser.add_argument("sweep_id", type=int, nargs="?", help="the sweep to drive")
    parser.add_argument("--resume", action="store_true", help="restore Tune's experiment")
    parser.add_argument("--standby", metavar="JOB_ID", help="wait, warm, for a sweep")
    args = parser.parse_args(argv)
    if (args.sweep_id is None) == (args.standby is None):
        parser.error("give a sweep id or --standby JOB_ID, not both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    log.info("job start-up: %.2f s from exec to main (Python, SQLAlchemy, settings)", _age())
    settings = load_settings()
    factory = make_session_factory(make_engine(settings.database_url))
    if args.standby is not None:
        return standby(settings, factory, args.standby)
    return drive(settings, factory, args.sweep_id, args.resume)


def standby(settings: Settings, factory: sessionmaker[Session], job_id: str) -> int:
    """Warm up, then wait for the sweep the dispatcher hands to ``job_id`` and drive it."""
    _join_cluster()
    with session_scope(factory) as session:  # a row already gone was claimed or retired
        if store.mark_standby_ready(session, job_id):
            log.info("standby %s is ready", job_id)
    last_ok = time.monotonic()
    while True:
        try:
            with session_scope(factory) as session:
                sweep_id, unclaimed = store.standby_poll(session, job_id)
                waiting = sweep_id is None and unclaimed
            last_ok = time.monotonic()
        except StorageError as err:
            if time.monotonic() - last_ok > STANDBY_DB_PATIENCE_S:
                log.error("standby %s: the database is unreachable; exiting: %s", job_id, err)
                return 1
            sweep_id, waiting = None, True
        if sweep_id is not None:
            log.info("standby %s drives sweep %s", job_id, sweep_id)
            return drive(settings, factory, sweep_id, resume=None)
        if not waiting:
            log.info("standby %s retired", job_id)
            return 0
        time.sleep(STANDBY_POLL_S)


def _join_cluster() -> None:
    """Import the driver and join the Ray cluster this job was submitted to."""
    t0 = time.monotonic()
    import ray

    import workers.driver.sweep  # noqa: F401  (Ray Tune and MLflow: the slow imports, done now)

    if ray.is_initialized():
        return
    t1 = time.monotonic()
    ray.init(log_to_driver=False, runtime_env=_trial_worker_env())
    log.info(
        "job start-up: driver imports %.2f s, ray.init %.2f s (%.2f s from exec)",
        t1 - t0, time.monotonic() - t1, _age(),
    )  # fmt: skip


def _trial_worker_env() -> dict[str, str] | None:
    """The sweep's trial workers fork from the trial worker zygote when the job names one
    (``py_executable``, on top of the job's runtime environment)."""
    if not os.environ.get(WORKER_SOCKET_ENV):
        return None
    return {"py_executable": launch_command(sys.executable)}


def _age() -> float:
    """Seconds since this process was started (from /proc; 0 where there is none)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def drive(
    settings: Settings, factory: sessionmaker[Session], sweep_id: int, resume: bool | None
) -> int:
    """Run sweep ``sweep_id`` to its end, beating the sweep's heartbeat meanwhile.

    ``resume`` None means: restore Tune's experiment when the sweep had started before.
    """
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sweep_id)
        if sweep.status in FINAL_SWEEP_STATUSES:
            log.info("sweep %s is already %s; nothing to run", sweep.id, sweep.status)
            return 0
        spec = SweepSpec.model_validate(sweep.spec)
        sweep_uid = sweep.uid
        if resume is None:
            resume = sweep.started_at is not None

    _join_cluster()
    from workers.driver.sweep import run_sweep

    heart = Heartbeat(factory, sweep_id, settings.heartbeat_seconds)
    heart.start()
    try:
        status = run_sweep(
            spec,
            DatabaseSink(factory, sweep_id),
            sweep_uid=sweep_uid,
            storage_path=settings.storage_path,
            resume=resume,
            patience_s=settings.db_patience_seconds,
            keep_checkpoints=settings.keep_checkpoints,
            data_dir=settings.data_dir,
            data_download=settings.data_download,
        )
    except (SinkUnavailableError, ClusterLostError) as err:
        log.error("sweep %s: %s; exiting, to be resumed", sweep_id, err)
        _note(factory, sweep_id, f"driver interrupted: {err}; it will be resumed")
        return 1
    except Exception as err:
        log.exception("sweep %s: the driver failed", sweep_id)
        _note(factory, sweep_id, f"driver error: {err}")
        return 1
    finally:
        heart.stop()
    log.info("sweep %s ended %s", sweep_id, status)
    return 0


def _note(factory: sessionmaker[Session], sweep_id: int, message: str) -> None:
    try:
        with session_scope(factory) as session:
            store.get_sweep(session, sweep_id).message = message
    except StorageError:
        log.warning("sweep %s: could not record: %s", sweep_id, message)


class Heartbeat:
    """Records every ``interval`` seconds, on a daemon thread, that the driver is alive.

    A frozen or hung process stops beating, which the API's monitor notices. A beat that fails
    (the database is down) is skipped; the next one tries again.
    """

    def __init__(self, factory: sessionmaker[Session], sweep_id: int, interval: float) -> None:
        self.factory, self.sweep_id, self.interval = factory, sweep_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Beat now, then every ``interval`` seconds."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating."""
        self._stop.set()
        self._thread.join(self.interval + 5)

    def _run(self) -> None:
        while True:
            try:
                with session_scope(self.factory) as session:
                    store.beat(session, self.sweep_id)
            except StorageError as err:
                log.warning("sweep %s: heartbeat not recorded: %s", self.sweep_id, err)
            if self._stop.wait(self.interval):
                return


if __name__ == "__main__":
    sys.exit(main())
