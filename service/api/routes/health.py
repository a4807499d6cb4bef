"""``/healthz`` (the process is alive) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request, Response, status

from service.api import readiness
from service.api.deps import DispatcherDep, SettingsDep
from service.api.schemas import GUARDED, ReadyPublic, WarmDriversPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is alive (touches no dependency)."""
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=ReadyPublic, responses=GUARDED | {503: {"model": ReadyPublic}}
)
def readyz(
    request: Request,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    response: Response,
) -> ReadyPublic:
    """The database, Ray and MLflow answer (checked side by side, 2 s each); 503 naming
    whichever does not.

    ``warm_drivers`` counts the standby sweep jobs (not part of readiness: without one a sweep
    starts a job of its own, seconds slower).
    """
    schema, factory = request.app.state.schema, request.app.state.session_factory
    checks = readiness.run_checks(
        {
            "database": functools.partial(readiness.check_database, schema, factory),
            "ray": functools.partial(readiness.check_ray, settings),
            "mlflow": functools.partial(readiness.check_mlflow, settings),
        }
    )
    warm = None
    if checks["database"] == "ok":
        count = dispatcher.warm_count()
        warm = WarmDriversPublic(ready=count.ready, starting=count.starting, wanted=count.wanted)
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyPublic(ready=ready, checks=checks, warm_drivers=warm)
