"""An outbox: calls run one at a time, in submission order, on one background thread.

The sweep driver reports every trial event to the database and to MLflow. Made in Tune's
callbacks, each write (20-50 ms) holds up Tune's controller before it can ask the trial for its
next result. Queued in an :class:`Outbox` instead, the writes leave the callbacks at once, run
while the caller goes on, and still happen in the order they were made; the caller's
:meth:`~Outbox.drain` waits where it must know they are done.

Failures: the first call that raises is logged and kept; the calls queued after it are dropped,
as they would never have been made had the failed call raised in the caller's thread, and every
later :meth:`Outbox.submit` or :meth:`Outbox.drain` raises :class:`OutboxError` from it. After
:meth:`Outbox.close` the outbox runs calls in the caller's thread, like plain calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from toolbox.errors import SweepsError

log = logging.getLogger(__name__)


class OutboxError(SweepsError):
    """A call queued in an outbox raised; the original exception is the ``__cause__``."""


class Outbox:
    """A FIFO of calls run by one daemon thread.

    Thread safety: any thread may submit, drain and close. Calls run one at a time, in the
    order their :meth:`submit` calls returned, and :meth:`drain` returning means every call
    submitted before it has run, with its effects visible to the draining thread.
    """

    def __init__(self, name: str) -> None:
        """Start the outbox's thread; ``name`` (e.g. ``sweep 3f2a``) prefixes its log lines."""
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[tuple[Callable[[], object], str | Callable[[], str]]] = deque()
        self._submitted = 0
        self._finished = 0  # calls run or dropped
        self._error: BaseException | None = None
        self._failed_call = ""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"outbox {name}", daemon=True)
        self._thread.start()

    @property
    def error(self) -> BaseException | None:
        """The exception of the first call that failed, or None."""
        with self._cond:
            return self._error

    def submit(self, fn: Callable[[], object], what: str | Callable[[], str] = "a write") -> None:
        """Queue ``fn``; after :meth:`close`, call it now in this thread.

        Args:
            fn: the call; it reads what may change meanwhile when it runs, so pass snapshots.
            what: what the call does, for the log should it fail; a callable is asked then
                (a call that makes several writes can name the one that failed).

        Raises:
            OutboxError: an earlier call failed (and the outbox is not closed).
        """
        with self._cond:
            if not self._closed:
                self._raise_if_failed()
                self._queue.append((fn, what))
                self._submitted += 1
                self._cond.notify_all()
                return
        self._thread.join()  # closing: what was queued before runs first
        fn()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every call submitted so far has run.

        Raises:
            OutboxError: a call failed.
            TimeoutError: calls are still queued or running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._finished < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    pending = target - self._finished
                    raise TimeoutError(f"{self.name}: calls still pending: {pending}")
                self._cond.wait(left)
            self._raise_if_failed()

    def close(self) -> BaseException | None:
        """Run what is queued, stop the thread and return the first failure, if any.

        Never raises a call's failure: the caller decides what it means. Idempotent.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        return self.error

    def failure(self) -> OutboxError | None:
        """The first failure as the :class:`OutboxError` a submitter gets, or None."""
        with self._cond:
            return self._wrapped_error()

    def raise_if_failed(self) -> None:
        """Raise :class:`OutboxError` if a call failed (never once closed)."""
        with self._cond:
            self._raise_if_failed()

    def _wrapped_error(self) -> OutboxError | None:
        if self._error is None:
            return None
        wrapped = OutboxError(
            f"{self.name}: {self._failed_call} failed: {type(self._error).__name__}: {self._error}"
        )
        wrapped.__cause__ = self._error
        return wrapped

    def _raise_if_failed(self) -> None:
        wrapped = self._wrapped_error()
        if wrapped is not None and not self._closed:
            raise wrapped

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed, and nothing left to run
                    return
                fn, what = self._queue.popleft()
                skip = self._error is not None
            if not skip:
                self._call(fn, what)
            with self._cond:
                self._finished += 1
                self._cond.notify_all()

    def _call(self, fn: Callable[[], object], what: str | Callable[[], str]) -> None:
        try:
            fn()
        except BaseException as err:  # kept and raised to the submitter; the thread goes on
            what = what if isinstance(what, str) else what()
            log.exception("%s: %s failed; the writes queued after it are dropped", self.name, what)
            with self._cond:
                self._error, self._failed_call = err, what
