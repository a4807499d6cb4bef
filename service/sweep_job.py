"""The entrypoint of a sweep's Ray job: ``python -m service.sweep_job <sweep_id> [--resume]``.

It rebuilds the settings from the environment the dispatcher gave the job (database URL, MLflow
URI, storage path; never the API token), connects to the cluster and runs the sweep's driver,
which reports through a :class:`service.sink.DatabaseSink`.

A driver error leaves the sweep open with the error as its message and exits non-zero: the
API's reconciliation then resumes the sweep from Tune's experiment state, or fails it once
``max_resumes`` is spent.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service import store
from service.config import load_settings
from service.db import make_engine, make_session_factory, session_scope
from service.sink import DatabaseSink
from workers.events import FINAL_SWEEP_STATUSES
from workers.spec import SweepSpec

log = logging.getLogger("service.sweep_job")


def main(argv: list[str] | None = None) -> int:
    """Run one sweep to its end; the exit status is 0 once the sweep has a final status."""
    parser = argparse.ArgumentParser(prog="python -m service.sweep_job")
    parser.add_argument("sweep_id", type=int)
    parser.add_argument("--resume", action="store_true", help="restore Tune's experiment")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    settings = load_settings()
    factory = make_session_factory(make_engine(settings.database_url))
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, args.sweep_id)
        if sweep.status in FINAL_SWEEP_STATUSES:
            log.info("sweep %s is already %s; nothing to run", sweep.id, sweep.status)
            return 0
        spec = SweepSpec.model_validate(sweep.spec)
        experiment, parent_run_id, uid = sweep.experiment_name, sweep.parent_run_id, sweep.uid

    import ray  # the job's driver process joins the cluster it was submitted to

    from workers.driver import run_sweep

    ray.init(log_to_driver=False)
    sink = DatabaseSink(factory, args.sweep_id)
    try:
        status = run_sweep(
            spec,
            sink,
            sweep_id=uid,
            tracking_uri=settings.mlflow_tracking_uri,
            mlflow_experiment=experiment,
            storage_path=settings.storage_path,
            parent_run_id=parent_run_id,
            resume=args.resume,
        )
    except Exception as err:
        log.exception("sweep %s: the driver failed", args.sweep_id)
        with session_scope(factory) as session:
            store.get_sweep(session, args.sweep_id).message = f"driver error: {err}"
        return 1
    log.info("sweep %s ended %s", args.sweep_id, status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
