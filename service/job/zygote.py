"""``python -m service.job.zygote JOB_ID``: the driver zygote of one database, a Ray job itself.

A sweep driver's start-up is mostly imports (Ray Tune, SQLAlchemy, the driver: seconds of CPU
each time). The zygote pays them once and never joins the cluster (a process that has called
``ray.init`` must not fork); it listens on ``SWEEPS_DRIVER_ZYGOTE_SOCKET`` and forks one driver
per :mod:`service.job.launch` launcher (:func:`workers.warm.forks.serve`). The driver runs
:func:`service.job.run.main` with the launcher's arguments and environment, joins Ray as the
launcher's job and shows in ``/proc`` as ``python -m service.job ARGS``, as a cold-started
driver does. So each sweep still has its own process, log, Ray job and failure domain: a driver
that crashes takes down itself and its launcher's job, never the zygote or another sweep. The
newest zygote of a database takes the socket over; an older one then exits.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from service.job.launch import SOCKET_ENV
from workers.warm.forks import serve

log = logging.getLogger("service.job.zygote")
DRIVER_TITLE = ("python", "-m", "service.job")


def main(argv: list[str]) -> int:
    """Import the driver, then fork one driver per launcher until replaced; 0 when replaced."""
    job_id = argv[0] if argv else "?"
    where = os.environ.get(SOCKET_ENV, "")
    _warm_up()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not where:
        log.error("zygote %s: %s is not set; nowhere to listen", job_id, SOCKET_ENV)
        return 1
    return serve(Path(where), _run_driver, title=lambda args: [*DRIVER_TITLE, *args])


def _warm_up() -> None:
    """Import what a driver imports (the seconds of CPU this process exists to save)."""
    import ray  # noqa: F401

    import service.job.run  # noqa: F401
    import workers.driver.sweep  # noqa: F401


def _run_driver(argv: list[str]) -> int:
    from service.job.run import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
