"""What one request, and one client, may cost the API: its body, its rate, its held long polls,
and what a new sweep may ask of the deployment (:func:`admit`).

Two ASGI middlewares, outside everything else: :class:`BodyLimitMiddleware` answers 413 to a
body past ``max_body_bytes`` while it is read (at once when ``Content-Length`` says so, as soon
as the count passes the limit otherwise: a chunked body is never buffered whole), and
:class:`RateLimitMiddleware` answers 429 with ``Retry-After`` to a client past ``rate_limit``
(a moving window, per token, or per address without one). :class:`HeldPolls` caps the long
polls a client holds at once.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import store
from service.config import Settings
from service.dispatch.dispatcher import Dispatcher
from service.errors import InputLimitError, TooManyError
from workers.spec import SweepSpec

UNLIMITED_PATHS = frozenset({"/healthz"})
"""Paths no rate applies to: liveness probes."""


def client_key(scope: Scope) -> str:
    """Who is asking: a digest of the bearer token sent, else the client's address."""
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "token:" + hashlib.sha256(token.strip().encode()).hexdigest()[:16]
    client = scope.get("client")
    return f"address:{client[0] if client else 'unknown'}"


class BodyLimitMiddleware:
    """413 for any request whose body is larger than ``max_bytes`` (see the module)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.message = (
            f"the request body is larger than {max_bytes} bytes (SWEEPS_MAX_BODY_BYTES); "
            "send a smaller sweep"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # FastAPI lets an HTTPException through
                    raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted, send)


class RateLimitMiddleware:
    """429 with ``Retry-After`` once a client passes ``rate`` (see the module)."""

    def __init__(self, app: ASGIApp, rate: str) -> None:
        self.app = app
        self.rate = limits.parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        key = client_key(scope)
        if self.limiter.hit(self.rate, key):
            await self.app(scope, receive, send)
            return
        reset = self.limiter.get_window_stats(self.rate, key).reset_time
        after = max(1, math.ceil(reset - time.time()))
        detail = f"more than {self.rate} requests (SWEEPS_RATE_LIMIT); try again in {after} s"
        response = JSONResponse({"detail": detail}, 429, headers={"Retry-After": str(after)})
        await response(scope, receive, send)


class HeldPolls:
    """Counts the long polls each client holds (on the event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One more held poll of ``key`` for the block.

        Raises:
            TooManyError: ``key`` already holds ``limit`` of them.
        """
        if self._held[key] >= self.limit:
            raise TooManyError(
                f"this client already holds {self.limit} waiting requests "
                "(SWEEPS_MAX_HELD_POLLS); wait on one sweep at a time, or without ?wait=",
                retry_after=1,
            )
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]


def admit(spec: SweepSpec, session: Session, settings: Settings, dispatcher: Dispatcher) -> None:
    """Refuse a new sweep past this deployment's limits: its budget of trials x epochs, the
    open sweeps, a trial no node can hold.

    Raises:
        InputLimitError: the sweep itself asks too much (422, naming the field).
        TooManyError: too many sweeps are open (429).
    """
    cost = spec.num_trials * spec.epochs
    if cost > settings.max_trial_epochs:
        field = "parameters" if spec.method == "grid" else "max_trials"
        raise InputLimitError(
            field,
            f"the sweep plans {spec.num_trials} trials x {spec.epochs} epochs = {cost} "
            f"trial-epochs, past this deployment's budget of {settings.max_trial_epochs} "
            "(SWEEPS_MAX_TRIAL_EPOCHS); plan fewer trials or epochs",
        )
    if store.open_count(session) >= settings.max_open_sweeps:
        raise TooManyError(
            f"{settings.max_open_sweeps} sweeps are open, this deployment's limit "
            "(SWEEPS_MAX_OPEN_SWEEPS); wait for one to end, or cancel one",
            retry_after=30,
        )
    dispatcher.check_fits(spec.resources_per_trial.cpu, spec.resources_per_trial.gpu)
