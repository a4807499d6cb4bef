"""A small HTTP client of the API, used by the ``sweeps`` CLI (no server code imported)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from service.errors import ServiceError


class ApiError(ServiceError):
    """The API answered with an error; the message carries its detail."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"HTTP {status_code}: {_describe(detail)}")


def _describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail)
    return str(detail)


RATE_LIMIT_PATIENCE_S = 120.0
"""How long a read (a GET: safe to repeat) waits out the API's rate limit before failing. A
report or the lecture reads every trial of a sweep: thousands of requests for a big one."""


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


class SweepsClient:
    """Talks to the API at ``base_url`` with an optional bearer ``token``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        """One request; a read past the API's rate limit (429) is asked again after its
        ``Retry-After``, for up to :data:`RATE_LIMIT_PATIENCE_S`."""
        deadline = time.monotonic() + RATE_LIMIT_PATIENCE_S
        while True:
            try:
                r = self.http.request(method, path, **kw)
            except httpx.HTTPError as err:
                raise ApiError(0, f"cannot reach the API at {self.http.base_url}: {err}") from err
            after = _retry_after(r) if method == "GET" and r.status_code == 429 else None
            if after is None or time.monotonic() + after > deadline:
                break
            time.sleep(after)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, detail)
        return r.json()

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """``POST /sweeps``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._call("POST", "/sweeps", json=spec, headers=headers)
        return result

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """``GET /sweeps``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        result: dict[str, Any] = self._call("GET", "/sweeps", params=params)
        return result

    def get(self, sweep_id: int, wait: float = 0.0, version: str | None = None) -> dict[str, Any]:
        """``GET /sweeps/{id}``; with ``wait``, a long poll (see :mod:`service.api.waiting`):
        answered when the sweep's version differs from ``version`` (without one: when the
        sweep is final), at the latest after ``wait`` seconds."""
        params: dict[str, Any] = {"wait": wait} if wait else {}
        if version is not None:
            params["version"] = version
        timeout = self.http.timeout.read
        result: dict[str, Any] = self._call(
            "GET",
            f"/sweeps/{sweep_id}",
            params=params,
            timeout=httpx.Timeout(None if timeout is None else timeout + wait),
        )
        return result

    def trials(self, sweep_id: int, offset: int = 0) -> dict[str, Any]:
        """``GET /sweeps/{id}/trials``: 500 trials from ``offset`` (the first 500 by default)."""
        params = {"limit": 500, "offset": offset}
        result: dict[str, Any] = self._call("GET", f"/sweeps/{sweep_id}/trials", params=params)
        return result

    def trial(self, sweep_id: int, number: int) -> dict[str, Any]:
        """``GET /sweeps/{id}/trials/{number}``: one trial with its whole curve."""
        result: dict[str, Any] = self._call("GET", f"/sweeps/{sweep_id}/trials/{number}")
        return result

    def cancel(self, sweep_id: int) -> dict[str, Any]:
        """``POST /sweeps/{id}/cancel``."""
        result: dict[str, Any] = self._call("POST", f"/sweeps/{sweep_id}/cancel")
        return result

    def ready(self) -> dict[str, Any]:
        """``GET /readyz`` (503 raises :class:`ApiError`)."""
        result: dict[str, Any] = self._call("GET", "/readyz")
        return result
