"""``/sweeps``: submit, list, inspect and cancel sweeps and their trials."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query, Response, status

from service import store
from service.deps import DispatcherDep, SessionDep, SweepDep, ViewsDep
from service.examples import SWEEP_EXAMPLES
from service.schemas import (
    CancelPublic,
    ErrorResponse,
    SweepCreate,
    SweepDetail,
    SweepsPublic,
    TrialDetail,
    TrialsPublic,
)

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SweepStatusFilter = Literal["pending", "running", "cancelling", "completed", "failed", "cancelled"]
TrialStatusFilter = Literal[
    "pending", "running", "completed", "stopped", "diverged", "failed", "cancelled"
]
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, description="items to skip")]
ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepDetail, responses=ERRORS)
def create_sweep(
    spec: Annotated[SweepCreate, Body(openapi_examples=SWEEP_EXAMPLES)],
    session: SessionDep,
    views: ViewsDep,
    dispatcher: DispatcherDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SweepDetail:
    """Store a sweep and start its Ray job; a reused ``Idempotency-Key`` returns the same sweep."""
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
    status: SweepStatusFilter | None = None,
) -> SweepsPublic:
    """List sweeps, newest first, optionally only those with ``status``."""
    sweeps, count = store.list_sweeps(session, status=status, limit=limit, offset=offset)
    return SweepsPublic(data=[views.sweep(s) for s in sweeps], count=count)


@router.get("/{sweep_id}", response_model=SweepDetail, responses=ERRORS)
def read_sweep(sweep: SweepDep, session: SessionDep, views: ViewsDep) -> SweepDetail:
    """A sweep's status, trial counts, best trial so far and MLflow links."""
    return views.sweep_detail(session, sweep)


@router.get("/{sweep_id}/trials", response_model=TrialsPublic, responses=ERRORS)
def list_trials(
    sweep: SweepDep,
    session: SessionDep,
    views: ViewsDep,
    limit: Limit = 100,
    offset: Offset = 0,
    status: TrialStatusFilter | None = None,
) -> TrialsPublic:
    """A sweep's trials in creation order, optionally only those with ``status``."""
    trials, count = store.list_trials(session, sweep, status=status, limit=limit, offset=offset)
    return TrialsPublic(data=[views.trial(sweep, t) for t in trials], count=count)


@router.get("/{sweep_id}/trials/{number}", response_model=TrialDetail, responses=ERRORS)
def read_trial(sweep: SweepDep, session: SessionDep, views: ViewsDep, number: int) -> TrialDetail:
    """One trial: its parameters, status and per-epoch curve."""
    return views.trial_detail(sweep, store.get_trial(session, sweep, number))


@router.post("/{sweep_id}/cancel", response_model=CancelPublic, responses=ERRORS)
def cancel_sweep(sweep: SweepDep, session: SessionDep) -> CancelPublic:
    """Ask the sweep to stop; its trials end as cancelled within 30 seconds."""
    store.request_cancel(session, sweep)
    return CancelPublic(
        id=sweep.id,
        status=sweep.status,
        message="cancellation requested; the trials stop within 30 seconds",
    )
