"""Warm standby drivers: sweep jobs started before the sweeps they will drive, and the zygote
they fork from.

A standby (:func:`~service.dispatch.commands.standby_command`) warms up, marks its row in
``standby_drivers`` ready and polls for a sweep whose ``ray_job_id`` names it; submitting a sweep
claims one in a single transaction. With ``Settings.driver_zygote`` the pool also keeps one
driver zygote job alive (:mod:`service.job.zygote`), from which every sweep job and standby
forks its driver, and a trial worker zygote on every node that runs trials (its job pinned to
the node), from which the sweeps' Ray trial workers on that node fork; standbys then cost a
fork and are topped up whatever runs. Without the driver zygote they are started only while no
sweep is open. The pool keeps ``Settings.warm_drivers`` standbys, or one
per CPU of the cluster. ARCHITECTURE.md ("Warm standby drivers") says why.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.config import Settings
from service.dispatch.commands import (
    DRIVER_ZYGOTE_MODULE,
    WORKER_ZYGOTE_MODULE,
    standby_command,
    zygote_command,
)
from service.errors import DispatchError
from service.store.db import session_scope
from workers.errors import RayJobsError
from workers.jobs import LIVE_JOB_STATES, JobClient, Node

log = logging.getLogger(__name__)
JOB_PREFIX = "sweeps-standby-"
ZYGOTE_PREFIX = "sweeps-zygote-"
ZYGOTE_WARMUP_S = 10.0
"""Standbys wait this long after a zygote is submitted, so that they fork from it rather than
start cold beside it while it imports."""
MAX_AUTO_WARM = 4
"""The most standbys kept by default (one per CPU of the cluster): each is an idle process and a
Ray job supervisor on the head node, whatever the cluster's size."""
ZYGOTE_YOUNG_S = 30.0
"""A zygote that ends sooner than this after its start failed; its successor waits (doubling)."""
ZYGOTE_MAX_BACKOFF_S = 600.0
ZYGOTE_PIN = 0.001
"""How much of its node's ``node:<ip>`` resource (1.0 in all) a worker zygote's job holds."""


@dataclass(frozen=True)
class WarmCount:
    """How many standbys are ready, how many still start, and how many are wanted."""

    ready: int
    starting: int
    wanted: int


class StandbyPool:
    """Starts, checks, hands out and retires the standby drivers of one database.

    Not thread-safe on its own: the :class:`~.dispatcher.Dispatcher` calls it under its lock.
    """

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        jobs: JobClient,
        nodes: Callable[[], list[Node]],
    ) -> None:
        """``nodes()``: the cluster's live nodes as last listed (never waits on Ray)."""
        self.settings = settings
        self.factory = factory
        self.jobs = jobs
        self.nodes = nodes
        # Zygote (driver, or worker@node:<ip>) -> this API's job of it; a restarted API starts
        # its own, which take the sockets over from the old ones.
        self.zygotes: dict[str, str] = {}
        self._zygote_at = float("-inf")  # monotonic time of the driver zygote's submission
        self._started: dict[str, float] = {}  # zygote -> when its job was last submitted
        self._failures: dict[str, int] = {}  # zygote -> its jobs in a row that died young

    @property
    def forks(self) -> bool:
        """Whether sweep jobs fork their drivers from the zygote (where its socket fits)."""
        return self.settings.driver_zygote_socket is not None

    def wanted(self) -> int:
        """``warm_drivers``, or one standby per CPU of the cluster, at most
        :data:`MAX_AUTO_WARM` (1 when Ray cannot say)."""
        if self.settings.warm_drivers is not None:
            return self.settings.warm_drivers
        cpus = sum(n.resources.get("CPU", 0.0) for n in self.nodes())
        return max(1, min(MAX_AUTO_WARM, int(cpus)))

    def count(self) -> WarmCount:
        """The pool as the database records it."""
        with session_scope(self.factory) as session:
            pool = store.standbys(session)
        ready = sum(d.ready_at is not None for d in pool)
        return WarmCount(ready, len(pool) - ready, self.wanted())

    def live_standby(self) -> str | None:
        """The job id of a standby whose job is alive, ready ones first; dead ones are dropped."""
        with session_scope(self.factory) as session:
            pool = store.standbys(session)
            order = [d.job_id for d in sorted(pool, key=lambda d: d.ready_at is None)]
        for job_id in order:
            if self._alive(job_id):
                return job_id
        return None

    def keep_warm(self, *, check_jobs: bool) -> None:
        """Keep the zygote alive (when forking) and top the pool up to :meth:`wanted`: at any
        time when forking, else only while no sweep is open.

        Args:
            check_jobs: first ask Ray about the zygote's and every standby's job and drop those
                that ended.
        """
        wanted = self._zygotes_wanted()
        for gone in self.zygotes.keys() - wanted.keys():  # its node left, and the job with it
            self.zygotes.pop(gone)
        for name, (module, pin) in wanted.items():
            self._keep_zygote(name, module, pin, check_jobs=check_jobs)
        with session_scope(self.factory) as session:
            ids = [d.job_id for d in store.standbys(session)]
            busy = bool(store.open_sweeps(session))
        if check_jobs:
            ids = [job_id for job_id in ids if self._alive(job_id)]
        if busy and not self.forks:
            return
        if time.monotonic() - self._zygote_at < ZYGOTE_WARMUP_S:
            return
        for _ in range(self.wanted() - len(ids)):
            self._start()

    def _zygotes_wanted(self) -> dict[str, tuple[str, dict[str, float] | None]]:
        """Zygote name -> its module and where its job runs: the driver zygote beside the
        sweep jobs (on the head, as every job without resources), and a trial worker zygote
        on every node that offers CPUs or GPUs to trials, pinned there (``node:<ip>``)."""
        wanted: dict[str, tuple[str, dict[str, float] | None]] = {}
        if self.forks:
            wanted["driver"] = (DRIVER_ZYGOTE_MODULE, None)
        if self.settings.worker_zygote_socket is not None:
            for node in self.nodes():
                offers = node.resources.get("CPU", 0.0) + node.resources.get("GPU", 0.0) > 0
                if offers and node.pin is not None:
                    wanted[f"worker@{node.pin}"] = (WORKER_ZYGOTE_MODULE, {node.pin: ZYGOTE_PIN})
        return wanted

    def _keep_zygote(
        self, name: str, module: str, pin: dict[str, float] | None, *, check_jobs: bool
    ) -> None:
        """Start zygote ``name`` (of ``module``, its job placed by ``pin``) unless this API's
        is alive (asked when ``check_jobs``); one that died young (it cannot listen where the
        settings say, say) is started again ever later, up to :data:`ZYGOTE_MAX_BACKOFF_S`
        apart."""
        known = self.zygotes.get(name)
        if known is not None and not (check_jobs and not self._job_alive(known)):
            return
        now = time.monotonic()
        if known is not None:
            started = self._started.get(name, now)
            young = now - started < ZYGOTE_YOUNG_S
            self._failures[name] = self._failures.get(name, 0) + 1 if young else 0
            self.zygotes.pop(name)
        failures = self._failures.get(name, 0)
        wait = min(ZYGOTE_MAX_BACKOFF_S, ZYGOTE_YOUNG_S * 2 ** (failures - 1)) if failures else 0
        if now - self._started.get(name, float("-inf")) < wait:
            return
        job_id = f"{ZYGOTE_PREFIX}{uuid.uuid4().hex[:12]}"
        command = zygote_command(self.settings.job_python, module, job_id)
        with session_scope(self.factory) as session:
            store.add_job(session, job_id)  # deleted from Ray once it ended
        try:
            self.jobs.submit(command, job_id, self.settings.job_env(), pin)
        except (DispatchError, RayJobsError) as err:
            log.warning("starting zygote %s (%s) failed: %s", job_id, name, err)
            with session_scope(self.factory) as session:
                store.forget_job(session, job_id)
            return
        log.info("started zygote %s (%s)", job_id, name)
        self.zygotes[name] = job_id
        self._started[name] = time.monotonic()
        if module == DRIVER_ZYGOTE_MODULE:  # what standbys fork from
            self._zygote_at = self._started[name]

    def _job_alive(self, job_id: str) -> bool:
        try:
            return self.jobs.status(job_id) in LIVE_JOB_STATES
        except (DispatchError, RayJobsError) as err:  # Ray unreachable: keep it, judge later
            log.warning("job %s: cannot ask Ray: %s", job_id, err)
            return True

    def retire_all(self) -> None:
        """Delete every unclaimed standby's row and stop its job, and the zygote's (graceful
        shutdown; drivers and workers already forked run on, each in its own session)."""
        with session_scope(self.factory) as session:
            ids = [d.job_id for d in store.standbys(session)]
            for job_id in ids:
                store.remove_standby(session, job_id)
        ids.extend(self.zygotes.values())
        self.zygotes.clear()
        for job_id in ids:
            try:
                self.jobs.stop(job_id)
            except (DispatchError, RayJobsError) as err:
                log.warning("stopping standby %s failed: %s", job_id, err)

    def _alive(self, job_id: str) -> bool:
        try:
            state = self.jobs.status(job_id)
        except (DispatchError, RayJobsError) as err:  # Ray unreachable: keep it, judge later
            log.warning("standby %s: cannot ask Ray: %s", job_id, err)
            return False
        if state in LIVE_JOB_STATES:
            return True
        log.info("standby %s is %s; dropping it", job_id, state)
        with session_scope(self.factory) as session:
            store.remove_standby(session, job_id)
        return False

    def _start(self) -> None:
        job_id = f"{JOB_PREFIX}{uuid.uuid4().hex[:12]}"
        with session_scope(self.factory) as session:
            store.add_standby(session, job_id)
            store.add_job(session, job_id)  # deleted from Ray once it ended or its sweep did
        env = self.settings.job_env()
        try:
            command = standby_command(self.settings.job_python, job_id, fork=self.forks)
            self.jobs.submit(command, job_id, env)
        except (DispatchError, RayJobsError) as err:
            log.warning("starting standby %s failed: %s", job_id, err)
            with session_scope(self.factory) as session:
                store.remove_standby(session, job_id)
                store.forget_job(session, job_id)
            return
        log.info("started standby driver %s", job_id)
