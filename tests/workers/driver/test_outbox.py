"""The outbox: ordered calls on one background thread, drains, failures, close."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from workers.driver.outbox import Outbox, OutboxError


@pytest.fixture
def outbox():
    box = Outbox("sweep test")
    yield box
    box.close()


def test_calls_run_in_submission_order_on_one_other_thread(outbox) -> None:
    seen: list[tuple[int, str]] = []
    for i in range(200):
        outbox.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    outbox.drain()

    assert [i for i, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"outbox sweep test"}


def test_submit_returns_at_once_and_drain_waits_for_every_call(outbox) -> None:
    done: list[int] = []

    def slow(i: int) -> None:
        time.sleep(0.1)
        done.append(i)

    start = time.monotonic()
    for i in range(3):
        outbox.submit(lambda i=i: slow(i))
    assert time.monotonic() - start < 0.05
    assert done == []
    outbox.drain()
    assert done == [0, 1, 2]
    assert time.monotonic() - start >= 0.3


def test_drain_gives_up_after_its_timeout(outbox) -> None:
    release = threading.Event()
    outbox.submit(release.wait)
    with pytest.raises(TimeoutError, match="calls still pending: 1"):
        outbox.drain(timeout=0.1)
    release.set()
    outbox.drain(timeout=5)


def test_a_failed_call_is_logged_raised_at_the_next_submit_and_drain(outbox, caplog) -> None:
    ran: list[str] = []
    hold = threading.Event()
    outbox.submit(hold.wait)
    outbox.submit(lambda: 1 / 0, "epoch 2 of t_00000")
    outbox.submit(lambda: ran.append("after"))  # queued behind the failure: dropped
    hold.set()

    with pytest.raises(OutboxError, match="sweep test: epoch 2 of t_00000 failed: Zero") as err:
        outbox.drain()
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    with pytest.raises(OutboxError):
        outbox.submit(lambda: ran.append("later"))
    with pytest.raises(OutboxError):  # the failure stays until the outbox is closed
        outbox.drain()
    assert ran == []
    assert isinstance(outbox.error, ZeroDivisionError)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == [
        "sweep test: epoch 2 of t_00000 failed; the writes queued after it are dropped"
    ]
    assert failures[0].exc_info is not None  # with its traceback


def test_close_runs_what_is_queued_then_runs_calls_in_the_callers_thread() -> None:
    outbox = Outbox("sweep test")
    seen: list[tuple[int, str]] = []
    for i in range(3):
        outbox.submit(lambda i=i: (time.sleep(0.05), seen.append((i, "queued"))))

    assert outbox.close() is None
    assert [i for i, _ in seen] == [0, 1, 2]
    assert not outbox._thread.is_alive()
    outbox.submit(lambda: seen.append((3, threading.current_thread().name)))
    assert seen[-1] == (3, threading.current_thread().name)
    with pytest.raises(ValueError):  # a plain call now: its exception is the caller's
        outbox.submit(lambda: int("x"))
    assert outbox.close() is None  # idempotent


def test_close_returns_the_failure_without_raising_it() -> None:
    outbox = Outbox("sweep test")
    outbox.submit(lambda: int("x"))

    failure = outbox.close()

    assert isinstance(failure, ValueError)
    outbox.drain()  # closed: the failure has been handed over
