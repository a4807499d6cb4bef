"""The API's background loop: reconcile sweeps with Ray at start-up, then keep cancels on time.

Runs in a daemon thread of the API process (the Jobs API client is synchronous). Every
``monitor_interval_seconds`` it stops the jobs of cancellations past their grace period and tops
up the warm standby drivers; every ``RECONCILE_EVERY`` ticks it reconciles again (jobs that
ended, drivers that stopped beating, a cluster that stopped answering; and the standbys' jobs),
so a job that dies or hangs while the API runs is resumed without waiting for a restart, and
deletes the Ray jobs that are done with (:mod:`~service.dispatch.janitor`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from service.dispatch.dispatcher import Dispatcher
from service.dispatch.janitor import Janitor
from service.dispatch.loop import Loop

log = logging.getLogger(__name__)
RECONCILE_EVERY = 5


class Monitor:
    """The background loop around a :class:`Dispatcher` (see the module)."""

    def __init__(self, dispatcher: Dispatcher, interval: float) -> None:
        self.dispatcher = dispatcher
        self.janitor = Janitor(dispatcher.factory, dispatcher.jobs)
        self._ticks = 0
        self.loop = Loop("sweeps-monitor", interval, self._tick)

    def start(self) -> None:
        """Start the loop; its first act is a full reconciliation."""
        self.loop.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it."""
        self.loop.stop(timeout)

    def _tick(self) -> None:
        full = self._ticks % RECONCILE_EVERY == 0
        self._ticks += 1
        if full:
            self._guard(self.dispatcher.reconcile)
            self._guard(self.janitor.clear)
        self._guard(self.dispatcher.enforce_cancel_deadlines)
        self._guard(functools.partial(self.dispatcher.keep_warm, check_jobs=full))

    @staticmethod
    def _guard(step: Callable[[], None]) -> None:
        """One step's failure must not skip the others (each is logged)."""
        try:
            step()
        except Exception:  # the loop must survive a database or network hiccup
            log.exception("monitor step failed")
