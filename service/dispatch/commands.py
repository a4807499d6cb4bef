"""The command lines of the Ray jobs the dispatcher submits; :mod:`service.job.run` parses them.

A job runs ``<job_python> -m service.job``: with a sweep id it drives that sweep, with
``--standby JOB_ID`` it warms up and waits for one (see :mod:`service.dispatch.standby`). With
``fork`` the job runs the same arguments through ``service.job.launch``, which forks the driver
from the database's driver zygote (``service.job.zygote``) instead of starting a Python.
"""

from __future__ import annotations

import shlex

JOB_MODULE = "service.job"
LAUNCH_MODULE = "service.job.launch"
DRIVER_ZYGOTE_MODULE = "service.job.zygote"
WORKER_ZYGOTE_MODULE = "workers.warm.trials"


def sweep_command(python: str, sweep_id: int, *, resume: bool, fork: bool = False) -> str:
    """The shell command of the job that drives sweep ``sweep_id`` (restoring Tune's state
    when ``resume``; forked from the zygote when ``fork``)."""
    args = [python, "-m", LAUNCH_MODULE if fork else JOB_MODULE, str(sweep_id)]
    return shlex.join([*args, "--resume"] if resume else args)


def standby_command(python: str, job_id: str, *, fork: bool = False) -> str:
    """The shell command of the standby job ``job_id`` (forked from the zygote when ``fork``)."""
    return shlex.join([python, "-m", LAUNCH_MODULE if fork else JOB_MODULE, "--standby", job_id])


def zygote_command(python: str, module: str, job_id: str) -> str:
    """The shell command of the zygote job ``job_id`` (``module``: :data:`DRIVER_ZYGOTE_MODULE`
    or :data:`WORKER_ZYGOTE_MODULE`)."""
    return shlex.join([python, "-m", module, job_id])
