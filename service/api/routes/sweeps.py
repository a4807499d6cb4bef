"""``/sweeps``: submit, list, inspect and cancel sweeps, read their trials and driver logs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.api.deps import (
    MAX_ID,
    DispatcherDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    SweepDep,
    SweepId,
    ViewsDep,
)
from service.api.examples import SWEEP_EXAMPLES
from service.api.limits import admit, client_key
from service.api.schemas import (
    GUARDED,
    CancelPublic,
    ErrorResponse,
    SweepCreate,
    SweepDetail,
    SweepsPublic,
    TrialDetail,
    TrialsPublic,
)
from service.api.views import Views
from service.api.waiting import MAX_WAIT_S, wait_for_news
from service.store.db import session_scope
from service.store.jobs import LOG_TAIL_CHARS
from workers.errors import RayJobsError
from workers.events import SweepStatus, TrialStatus

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=GUARDED)

Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="hold the request up to this many seconds until there is news (long poll)",
    ),
]
Version = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="the version of an earlier answer: with wait, answer when it changes",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="items to skip")]
TrialNumber = Annotated[int, Path(ge=1, le=MAX_ID, description="the trial's number")]
ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "a body that is not JSON"},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
}


REPLAYED: dict[int | str, dict[str, object]] = {
    200: {"model": SweepDetail, "description": "the sweep an earlier request with this key made"}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepDetail,
    responses=ERRORS | REPLAYED,
)
def create_sweep(
    spec: Annotated[SweepCreate, Body(openapi_examples=SWEEP_EXAMPLES)],
    session: SessionDep,
    views: ViewsDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SweepDetail:
    """Store a sweep and start its Ray job; a reused ``Idempotency-Key`` returns the same sweep."""
    if store.find_replay(session, spec, idempotency_key) is None:
        admit(spec, session, settings, dispatcher)
    sweep, created = store.create_sweep(session, spec, idempotency_key)
    session.commit()
    if created:
        dispatcher.submit(sweep.id)
        session.refresh(sweep)
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = views.sweep_links(sweep).self
    return views.sweep_detail(session, sweep)


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    views: ViewsDep,
    limit: Limit = 50,
    offset: Offset = 0,
    status: SweepStatus | None = None,
) -> SweepsPublic:
    """List sweeps, newest first, optionally only those with ``status``."""
    sweeps, count = store.list_sweeps(session, status=status, limit=limit, offset=offset)
    return SweepsPublic(data=[views.sweep(s) for s in sweeps], count=count)


@router.get("/{sweep_id}", response_model=SweepDetail, responses=ERRORS)
async def read_sweep(
    request: Request,
    sweep_id: SweepId,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    views: ViewsDep,
    wait: Wait = 0.0,
    version: Version = None,
) -> SweepDetail:
    """A sweep's status, trial counts, best trial so far, MLflow links and version.

    With ``wait``, a long poll: the answer comes as soon as the sweep's version differs from
    ``version`` (or, without ``version``, as soon as the sweep is final), and at the latest
    after ``wait`` seconds, with the sweep as it is then.
    """
    if wait:
        held = min(wait, settings.max_wait_seconds)
        with request.app.state.held_polls.hold(client_key(request.scope)):
            await wait_for_news(factory, sweep_id, version, held)
    return await run_in_threadpool(_sweep_detail, factory, views, sweep_id)


def _sweep_detail(factory: sessionmaker[Session], views: Views, sweep_id: int) -> SweepDetail:
    with session_scope(factory) as session:
        return views.sweep_detail(session, store.get_sweep(session, sweep_id))


@router.get("/{sweep_id}/trials", response_model=TrialsPublic, responses=ERRORS)
def list_trials(
    sweep: SweepDep,
    session: SessionDep,
    views: ViewsDep,
    limit: Limit = 100,
    offset: Offset = 0,
    status: TrialStatus | None = None,
) -> TrialsPublic:
    """A sweep's trials in creation order, optionally only those with ``status``."""
    trials, count = store.list_trials(session, sweep, status=status, limit=limit, offset=offset)
    return TrialsPublic(data=[views.trial(sweep, t) for t in trials], count=count)


@router.get("/{sweep_id}/trials/{number}", response_model=TrialDetail, responses=ERRORS)
def read_trial(
    sweep: SweepDep, session: SessionDep, views: ViewsDep, number: TrialNumber
) -> TrialDetail:
    """One trial: its parameters, status and per-epoch curve."""
    return views.trial_detail(sweep, store.get_trial(session, sweep, number))


LOG_ANSWER: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "the tail"}
}


@router.get("/{sweep_id}/log", response_model=None, responses=ERRORS | LOG_ANSWER)
def read_log(sweep: SweepDep, dispatcher: DispatcherDep) -> PlainTextResponse:
    """The tail of the sweep's driver log (text): from Ray while its job is there, then as kept
    with the sweep when its Ray jobs are deleted (once it is final and in MLflow). While Ray
    cannot be asked, a line that says so."""
    if sweep.driver_log or sweep.ray_job_id is None:
        return PlainTextResponse(sweep.driver_log)
    try:
        return PlainTextResponse(dispatcher.jobs.logs(sweep.ray_job_id)[-LOG_TAIL_CHARS:])
    except RayJobsError as err:
        return PlainTextResponse(
            f"(the driver's log is with Ray, which cannot be asked now: {err})\n"
        )


@router.post("/{sweep_id}/cancel", response_model=CancelPublic, responses=ERRORS)
def cancel_sweep(sweep: SweepDep, session: SessionDep) -> CancelPublic:
    """Ask the sweep to stop; its trials end as cancelled within 30 seconds."""
    return CancelPublic(
        id=sweep.id,
        status=store.request_cancel(session, sweep.id),
        message="cancellation requested; the trials stop within 30 seconds",
    )
