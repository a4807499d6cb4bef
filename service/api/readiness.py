"""Readiness checks of the API's dependencies, run side by side with a deadline each.

Each check makes one request (a ``SELECT 1``, Ray's ``/api/version``, MLflow's ``/health``) and
says ``ok`` or why not; :func:`run_checks` answers within :data:`CHECK_TIMEOUT_S` and a little
more, whatever hangs, naming each check that has not answered by then.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.store.db import Schema, session_scope

CHECK_TIMEOUT_S = 2.0
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")
"""Runs the checks; a check that hangs holds one thread until its own timeout ends it."""
_http = httpx.Client(timeout=CHECK_TIMEOUT_S)
atexit.register(_http.close)


def run_checks(checks: dict[str, Callable[[], str]]) -> dict[str, str]:
    """Every check's answer, or that it gave none within :data:`CHECK_TIMEOUT_S`."""
    futures = {name: _pool.submit(_safely, check) for name, check in checks.items()}
    done, _ = wait(futures.values(), timeout=CHECK_TIMEOUT_S + 0.5)
    return {
        name: future.result() if future in done else f"no answer within {CHECK_TIMEOUT_S:.0f} s"
        for name, future in futures.items()
    }


def _safely(check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as err:  # any failure means not ready; the text says which
        return f"failed: {err}"


def check_database(schema: Schema, factory: sessionmaker[Session]) -> str:
    """``ok`` when the schema is up to date and the database answers."""
    if not schema.ready.is_set():
        return f"not ready: {schema.error}"
    with session_scope(factory) as session:
        session.execute(text("SELECT 1"))
    return "ok"


def check_ray(settings: Settings) -> str:
    """``ok`` when Ray's dashboard (the Jobs API) answers with the cluster's token."""
    url = f"{settings.ray_dashboard_url.rstrip('/')}/api/version"
    token = settings.ray_auth_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    return _get(url, headers, f"Ray at {settings.ray_dashboard_url}")


def check_mlflow(settings: Settings) -> str:
    """``ok`` when the MLflow tracking server answers its health check."""
    uri = settings.mlflow_tracking_uri
    return _get(f"{uri.rstrip('/')}/health", {}, f"MLflow at {uri}")


def _get(url: str, headers: dict[str, str], what: str) -> str:
    try:
        r = _http.get(url, headers=headers)
    except httpx.HTTPError as err:
        return f"unreachable: {what}: {err}"
    return "ok" if r.status_code == 200 else f"unhealthy: {what}: HTTP {r.status_code}"
