"""The API's lease on the database: one holder at a time, on each backend."""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.dispatch.lease import LeasedWork
from service.store.db import session_scope


def take(factory: sessionmaker[Session], holder: str, ttl_s: float = 0.5) -> bool:
    with session_scope(factory) as session:
        return store.take_lease(session, "api-background", holder, ttl_s)


def test_one_holder_at_a_time_until_its_lease_expires_or_it_lets_go(
    factory: sessionmaker[Session],
) -> None:
    assert take(factory, "a") and take(factory, "a")  # taken, renewed
    assert not take(factory, "b")
    time.sleep(0.6)
    assert take(factory, "b") and not take(factory, "a")  # a's term ran out: b's now
    with session_scope(factory) as session:
        store.release_lease(session, "api-background", "a")  # not a's to release
        assert store.lease_holder(session, "api-background").holder == "b"  # type: ignore[union-attr]
        store.release_lease(session, "api-background", "b")
    assert take(factory, "a", ttl_s=30)


def test_of_processes_racing_for_a_free_lease_exactly_one_wins(
    factory: sessionmaker[Session],
) -> None:
    won: list[str] = []
    start = threading.Barrier(4)

    def race(holder: str) -> None:
        start.wait()
        if take(factory, holder, ttl_s=30):
            won.append(holder)

    threads = [threading.Thread(target=race, args=(f"p{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, won


class Work:
    """A background loop that records whether it runs."""

    def __init__(self, running: list[Work]) -> None:
        self.running = running

    def start(self) -> None:
        self.running.append(self)

    def stop(self, timeout: float = 10.0) -> None:
        self.running.remove(self)


def test_the_background_work_runs_in_one_process_and_moves_when_it_stops(
    factory: sessionmaker[Session],
) -> None:
    running: list[Work] = []
    retired: list[str] = []
    first, second = (
        LeasedWork(factory, 1.0, lambda: [Work(running)], lambda n=name: retired.append(n))
        for name in ("first", "second")
    )
    first.start()
    deadline = time.monotonic() + 5
    while not first.held and time.monotonic() < deadline:
        time.sleep(0.05)
    second.start()
    time.sleep(1.5)  # more than a term: the first renews, the second keeps trying
    assert first.held and not second.held and len(running) == 1
    first.stop()  # retires its standbys, then lets go
    assert retired == ["first"] and not running
    deadline = time.monotonic() + 5
    while not second.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.held and len(running) == 1
    second.stop()
    assert retired == ["first", "second"] and not running
