"""``/healthz`` (the process is alive) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from service.api.deps import DispatcherDep, SessionDep
from service.api.schemas import ReadyPublic, WarmDriversPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
def readyz(session: SessionDep, dispatcher: DispatcherDep, response: Response) -> ReadyPublic:
    """The database, Ray and MLflow answer; 503 naming whichever does not.

    ``warm_drivers`` counts the standby sweep jobs (not part of readiness: without one a sweep
    starts a job of its own, seconds slower).
    """
    checks: dict[str, str] = {}
    warm = None
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
        count = dispatcher.warm_count()
        warm = WarmDriversPublic(ready=count.ready, starting=count.starting, wanted=count.wanted)
    except Exception as err:  # any failure means not ready; the text says which
        checks["database"] = f"unreachable: {err}"
    checks.update(dispatcher.check_dependencies())
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyPublic(ready=ready, checks=checks, warm_drivers=warm)
