"""Bearer-token access control for the API.

With an API token configured (always in the compose stack), every request but ``GET /healthz``
needs ``Authorization: Bearer <token>`` and is answered 401 with ``WWW-Authenticate: Bearer``
otherwise. Without one, the settings only allow the API on a loopback address (embedded local
mode).

It is ASGI middleware rather than an app-wide FastAPI dependency because dependencies skip the
routes FastAPI adds itself (``/openapi.json``, ``/docs``), which would stay open.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/healthz"})
"""Paths anyone may call: liveness probes carry no token."""

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="toolbox-sweeps"'}


class BearerAuthMiddleware:
    """Answers 401 to any HTTP request without the right bearer token (a no-op when ``token``
    is None)."""

    def __init__(self, app: ASGIApp, token: SecretStr | None) -> None:
        self.app = app
        self.expected = token.get_secret_value().encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is None
            or scope["type"] != "http"
            or scope["path"] in PUBLIC_PATHS
            or self._authorized(Headers(scope=scope))
        ):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "missing or wrong API token; send 'Authorization: Bearer <token>'"},
            status_code=401,
            headers=CHALLENGE,
        )
        await response(scope, receive, send)

    def _authorized(self, headers: Headers) -> bool:
        assert self.expected is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        # compare_digest takes as long for a wrong token as for a right one of the same length.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.expected
        )
