"""The API's background work runs in one API process per database: the lease holder.

Every API process serves requests; only the one holding the database's lease (see
:mod:`service.store.leases`) runs the dispatch monitor, the tracking sender and the standby pool,
so two processes (``uvicorn --workers 2``, a rolling update) never both reconcile a sweep, create
its MLflow runs or start zygotes on the same socket. The holder renews the lease every fifth of
its term and stops its background work when half the term passed without a renewal (the
database is down, say), well before another process may take it; the others try every fifth of
a term and start theirs when it expires (a stopped holder releases it at once).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from service.dispatch.loop import Loop
from service.errors import StorageError
from service.store.db import session_scope
from service.store.leases import lease_holder, release_lease, take_lease

log = logging.getLogger(__name__)
LEASE = "api-background"


class Work(Protocol):
    """A background loop: started when the lease is taken, stopped when it is lost."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


class LeasedWork:
    """Runs what ``make()`` builds while this process holds the lease (see the module)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        ttl_s: float,
        make: Callable[[], list[Work]],
        retire: Callable[[], None],
    ) -> None:
        """``retire`` runs at :meth:`stop` while the lease is still held (the standbys go)."""
        self.factory, self.ttl_s, self.make, self.retire = factory, ttl_s, make, retire
        self.holder = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._valid_until = float("-inf")  # monotonic
        self._work: list[Work] = []
        self._told = ""  # the other holder last logged
        self.loop = Loop("sweeps-lease", ttl_s / 5, self._step)

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now (and runs the background work)."""
        return bool(self._work)

    def start(self) -> None:
        """Try for the lease now and then every fifth of its term."""
        self.loop.start()

    def stop(self) -> None:
        """Stop the background work; while still holding the lease, ``retire`` and release it."""
        self.loop.stop()
        if not self._work:
            return
        self._stop_work()
        try:
            self.retire()
        except Exception:  # Ray or the database already gone: what it retires exits alone
            log.warning("retiring the background work failed", exc_info=True)
        try:
            with session_scope(self.factory) as session:
                release_lease(session, LEASE, self.holder)
        except StorageError as err:
            log.warning("releasing the lease failed (it expires alone): %s", err)

    def _step(self) -> None:
        began = time.monotonic()
        try:
            with session_scope(self.factory) as session:
                if take_lease(session, LEASE, self.holder, self.ttl_s):
                    self._valid_until = began + self.ttl_s / 2
                else:
                    self._valid_until = float("-inf")  # another process holds it
                    self._note_other(session)
        except StorageError as err:
            log.warning("cannot renew the lease: %s", err)
        if time.monotonic() < self._valid_until:
            if not self._work:
                log.info("%s holds the lease: starting the background work", self.holder)
                self._work = self.make()
                for work in self._work:
                    work.start()
        elif self._work:
            log.warning("%s lost the lease: stopping the background work", self.holder)
            self._stop_work()

    def _stop_work(self) -> None:
        work, self._work = self._work, []
        for w in work:
            w.stop()

    def _note_other(self, session: Session) -> None:
        other = lease_holder(session, LEASE)
        if other is not None and other.holder != self._told:
            self._told = other.holder
            log.warning(
                "another API process (%s) runs this database's background work until %s; this "
                "one serves requests and takes over when that lease expires",
                other.holder, other.expires_at.isoformat(timespec="seconds"),
            )  # fmt: skip
