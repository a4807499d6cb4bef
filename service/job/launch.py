"""``python -m service.job.launch ARGS``: a sweep job's entrypoint, forked from the driver zygote.

The Ray job of a sweep (or of a standby) runs this launcher, which imports nothing but the
standard library (:func:`workers.warm.forks.launch`). It asks the database's driver zygote
(:mod:`service.job.zygote`, on ``SWEEPS_DRIVER_ZYGOTE_SOCKET``, set by
``service.config.Settings.job_env``) to fork a driver that runs ``python -m service.job ARGS``
with this process's environment, working directory and standard streams, so the driver writes
this job's log and joins Ray as this job; it waits for the driver and exits with its status.
Without a zygote that answers, it execs ``python -m service.job ARGS`` itself: the same job,
started cold.
"""

from __future__ import annotations

import os
import sys

from workers.warm.forks import launch

SOCKET_ENV = "SWEEPS_DRIVER_ZYGOTE_SOCKET"
"""Names the zygote's socket (``service.config.DRIVER_ZYGOTE_SOCKET_ENV``)."""


def main(args: list[str]) -> int:
    """Run ``python -m service.job args`` as a fork of the zygote, or exec it cold."""
    code = launch(os.environ.get(SOCKET_ENV), args)
    if code is None:
        os.execv(sys.executable, [sys.executable, "-m", "service.job", *args])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
