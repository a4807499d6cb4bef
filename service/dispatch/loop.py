"""A background loop of the API process: one daemon thread calling a step at an interval."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.errors import StorageError

log = logging.getLogger(__name__)


class Loop:
    """Calls ``step`` every ``interval`` seconds on a daemon thread named ``name``, until
    :meth:`stop`. A step that raises is logged and the loop goes on: a database or network
    hiccup must not end it (a database that is down is one line, not a traceback)."""

    def __init__(self, name: str, interval: float, step: Callable[[], None]) -> None:
        self.name, self.interval, self.step = name, interval, step
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread; its first step runs at once."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end after the step in progress, and wait for it."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except StorageError as err:
                log.warning("%s: the database is unavailable: %s", self.name, err)
            except Exception:
                log.exception("%s: step failed", self.name)
            self.stopping.wait(self.interval)
