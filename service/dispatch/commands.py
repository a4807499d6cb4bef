"""The command lines of the Ray jobs the dispatcher submits; :mod:`service.job.run` parses them.

A job runs ``<job_python> -m service.job``: with a sweep id it drives that sweep, with
``--standby JOB_ID`` it warms up and waits for one (see :mod:`service.dispatch.standby`).
"""

from __future__ import annotations

import shlex

JOB_MODULE = "service.job"


def sweep_command(python: str, sweep_id: int, *, resume: bool) -> str:
    """The shell command of the job that drives sweep ``sweep_id`` (restoring Tune's state
    when ``resume``)."""
    args = [python, "-m", JOB_MODULE, str(sweep_id)]
    return shlex.join([*args, "--resume"] if resume else args)


def standby_command(python: str, job_id: str) -> str:
    """The shell command of the standby job ``job_id``."""
    return shlex.join([python, "-m", JOB_MODULE, "--standby", job_id])
