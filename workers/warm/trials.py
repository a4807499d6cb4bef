"""``python -m workers.warm.trials JOB_ID``: the zygote of a database's Ray trial workers.

A Ray trial worker starts as a Python that imports torch, scikit-learn (digits), matplotlib
(the samples picture) and the toolbox before its first epoch: seconds of CPU per trial, more
than a small trial trains. This zygote (a Ray job of its own, started by the API's standby
pool) imports them once and forks every trial worker of every sweep job whose runtime
environment names the launcher (``py_executable``: ``python -m workers.warm.trials --launch``,
set by the sweep's driver); the child runs Ray's ``default_worker.py`` with the arguments the
raylet gave, as the raylet's own process would, and imports Ray itself. The zygote never
imports Ray: Ray's core reads its configuration from the environment once per process (the
worker's job id among it), so it must first load in the child. torch starts no thread and
touches no GPU on import, so forking it is safe. A launcher that finds no zygote on
``SWEEPS_WORKER_ZYGOTE_SOCKET`` execs the worker cold. The zygote deletes the Ray log files of
the workers it forked once they are dead, but for the newest :data:`KEEP_DEAD_WORKER_LOGS`.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
import time
from collections import deque
from pathlib import Path

from workers.warm.forks import launch, serve

log = logging.getLogger("workers.warm.trials")
SOCKET_ENV = "SWEEPS_WORKER_ZYGOTE_SOCKET"
"""Names the zygote's socket (``service.config.WORKER_ZYGOTE_SOCKET_ENV``)."""
LAUNCH_FLAG = "--launch"
KEEP_DEAD_WORKER_LOGS = 200
"""The dead forked workers whose Ray log files a zygote keeps (the newest; for a look at a trial
that failed)."""
TIDY_EVERY_S = 30.0


def launch_command(python: str) -> str:
    """The ``py_executable`` of a sweep's trial workers: this module's launcher."""
    return f"{python} -m workers.warm.trials {LAUNCH_FLAG}"


def main(argv: list[str]) -> int:
    """``--launch WORKER_ARGS``: start one trial worker; else ``JOB_ID``: be the zygote."""
    if argv[:1] == [LAUNCH_FLAG]:
        args = argv[1:]
        code = launch(os.environ.get(SOCKET_ENV), args)
        if code is None:
            os.execv(sys.executable, [sys.executable, *args])
        return code
    where = os.environ.get(SOCKET_ENV, "")
    _warm_up()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not where:
        log.error("trial worker zygote: %s is not set; nowhere to listen", SOCKET_ENV)
        return 1
    return serve(Path(where), _run_worker, title=None, tender=WorkerLogs())


class WorkerLogs:
    """Deletes the log files Ray wrote for the workers this zygote forked once they are dead,
    but for the newest ``keep`` dead ones (Ray never deletes a worker's files, so a node's
    temp folder would grow with every trial it ran). A worker's files are its node's
    ``<temp-dir>/<session-name>/logs/*-<pid>.out|.err`` and ``*_<pid>.log``, found from the
    arguments the raylet gave it."""

    def __init__(self, keep: int = KEEP_DEAD_WORKER_LOGS, every_s: float = TIDY_EVERY_S) -> None:
        self.keep, self.every_s = keep, every_s
        self.alive: dict[int, Path] = {}  # pid -> its logs folder
        self.dead: deque[tuple[int, Path]] = deque()
        self._tended = time.monotonic()

    def forked(self, pid: int, argv: list[str]) -> None:
        args = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        if "--temp-dir" in args and "--session-name" in args:
            self.alive[pid] = Path(args["--temp-dir"]) / args["--session-name"] / "logs"

    def tend(self) -> None:
        if time.monotonic() - self._tended < self.every_s:
            return
        self._tended = time.monotonic()
        for pid in [p for p in self.alive if not _running(p)]:
            self.dead.append((pid, self.alive.pop(pid)))
        while len(self.dead) > self.keep:
            pid, logs = self.dead.popleft()
            for pattern in (f"*-{pid}.out", f"*-{pid}.err", f"*_{pid}.log"):
                for path in logs.glob(pattern):
                    path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the pid: ours is gone
        return False
    return True


def _warm_up() -> None:
    """What a trial worker imports before its first epoch (the CPU this process saves), Ray
    and what imports it (Ray Tune, the trainable) excepted: see the module."""
    import matplotlib

    matplotlib.use("Agg")  # what the samples picture draws with; no display here
    import matplotlib.pyplot
    import sklearn.datasets  # noqa: F401  (digits)
    import torch._dynamo  # noqa: F401  (torch, and what every optimizer's constructor imports: 2-3 s)

    import toolbox.data
    import toolbox.packed  # a pack's members train in one worker
    import toolbox.train  # noqa: F401


def _run_worker(argv: list[str]) -> int:
    """Ray's worker main, as ``python default_worker.py ARGS`` would run it."""
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
