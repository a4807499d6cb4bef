"""Long polling: ``GET /sweeps/{id}?wait=S`` holds the request until there is news.

A held request looks at the sweep every :data:`CHECK_INTERVAL_S` (one small query in its own
short transaction) and is answered as soon as there is news: with ``version`` (from an earlier
response), when the sweep's version differs from it; without, when the sweep is final; and at
the latest after ``wait`` seconds, with the sweep as it is then.
"""

from __future__ import annotations

import time

import anyio
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.store.db import session_scope
from workers.events import FINAL_SWEEP_STATUSES

CHECK_INTERVAL_S = 0.1
"""How often a held request looks at the sweep: the latency of the news it waits for."""
MAX_WAIT_S = 60.0
"""The longest a request may be held (``wait``): below common proxy and client timeouts."""


def _news(factory: sessionmaker[Session], sweep_id: int, version: str | None) -> bool:
    with session_scope(factory) as session:
        if version is None:  # only the status counts: the cheaper read
            return store.sweep_status(session, sweep_id) in FINAL_SWEEP_STATUSES
        return store.sweep_version(session, sweep_id) != version


async def wait_for_news(
    factory: sessionmaker[Session], sweep_id: int, version: str | None, wait: float
) -> None:
    """Return when sweep ``sweep_id`` has news for a client that saw ``version`` (see the
    module docstring), or after ``wait`` seconds.

    Raises:
        SweepNotFoundError: the sweep does not exist.
    """
    deadline = time.monotonic() + wait
    while True:
        if await anyio.to_thread.run_sync(_news, factory, sweep_id, version):
            return
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await anyio.sleep(min(CHECK_INTERVAL_S, left))
