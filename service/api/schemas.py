"""Request and response models of the API (``SweepCreate``, ``SweepPublic``, ``SweepsPublic``…).

Every float that leaves the API is finite: metrics are filtered when stored and again here,
so no response ever carries NaN or infinity.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from workers.spec import SweepSpec


class SweepCreate(SweepSpec):
    """The body of ``POST /sweeps``: a :class:`workers.spec.SweepSpec`, with finite numbers."""

    @model_validator(mode="before")
    @classmethod
    def _finite_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict | list):
            _reject_non_finite(data, "")
        return data


def _reject_non_finite(value: Any, path: str) -> None:
    """Raise ValueError naming the first NaN or infinity in ``value`` (JSON as parsed). Numbers
    are checked in bulk and a path is built only where one is found: a 1 MiB body of numbers
    costs a few milliseconds."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path or 'body'}: {value} is not a finite number; give a real value")
        return
    values = list(value.values()) if isinstance(value, dict) else value
    floats = [item for item in values if item.__class__ is float]
    if all(map(math.isfinite, floats)) and not any(
        item.__class__ is dict or item.__class__ is list for item in values
    ):
        return
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if item.__class__ in (dict, list, float):
            where = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
            _reject_non_finite(item, where)


class Links(BaseModel):
    """Where to look next: this resource in the API and in MLflow."""

    self: str
    trials: str | None = None
    mlflow_experiment: str | None = Field(
        None,
        description="the sweep's trials in MLflow's chart view, best first, their validation "
        "curves drawn together (the same link while the sweep runs and after it)",
    )
    mlflow_run: str | None = Field(None, description="this sweep's or trial's run in MLflow")
    mlflow_artifacts: str | None = Field(None, description="that run's artifacts in MLflow")
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="file name -> its raw download from MLflow (404 until the service "
        "uploaded it: a sweep's curves, parameter plot and summary, a trial's samples)",
    )


class SweepPublic(BaseModel):
    """A sweep as listed."""

    id: int
    uid: str = Field(description="the sweep's MLflow tag sweeps.sweep_uid and Tune experiment")
    name: str
    status: str
    message: str
    planned_trials: int
    ray_job_id: str | None
    resumes: int
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    links: Links


class SweepsPublic(BaseModel):
    """A page of sweeps and how many match in all."""

    data: list[SweepPublic]
    count: int


class BestTrial(BaseModel):
    """The best trial so far by the sweep's metric at its last reported epoch."""

    number: int
    key: str
    status: str
    params: dict[str, Any]
    metric: str
    goal: str
    value: float
    epoch: int
    links: Links


class SweepDetail(SweepPublic):
    """A sweep with its specification, trial counts and best trial."""

    spec: dict[str, Any]
    trial_counts: dict[str, int] = Field(description="trials per status, plus 'total'")
    best_trial: BestTrial | None
    version: str = Field(
        description="changes whenever anything above changes; pass it back as "
        "GET /sweeps/{id}?wait=S&version=V to be answered only when there is news"
    )
    mlflow_pending: int = Field(
        description="writes MLflow does not have yet (run creations, configurations, epochs, "
        "closes): MLflow is behind by this many; 0 once it has everything"
    )
    mlflow_error: str = Field(description="why the last delivery to MLflow failed; '' if none")


class EpochPublic(BaseModel):
    """One point of a trial's curve."""

    epoch: int
    metrics: dict[str, float]


class TrialPublic(BaseModel):
    """A trial as listed: its parameters, status and latest metrics."""

    number: int
    key: str
    status: str
    params: dict[str, Any]
    attempts: int
    message: str
    epochs_done: int
    last_metrics: dict[str, float]
    mlflow_run_id: str | None
    pack: str = Field(description="the pack it trained in (packed training), empty if alone")
    created_at: datetime
    ended_at: datetime | None
    links: Links


class TrialsPublic(BaseModel):
    """A page of a sweep's trials and how many match in all."""

    data: list[TrialPublic]
    count: int


class TrialDetail(TrialPublic):
    """A trial with its whole per-epoch curve."""

    curve: list[EpochPublic]


class CancelPublic(BaseModel):
    """The outcome of ``POST /sweeps/{id}/cancel``."""

    id: int
    status: str
    message: str


class ErrorItem(BaseModel):
    """One problem with a request: where (``field``, ``loc``) and what to do (``message``)."""

    field: str
    message: str
    loc: list[str | int]
    type: str


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx the API produces itself."""

    detail: list[ErrorItem] | str


class WarmDriversPublic(BaseModel):
    """Standby sweep jobs: ready to take a sweep, still starting, and how many are kept."""

    ready: int
    starting: int
    wanted: int


class ReadyPublic(BaseModel):
    """Readiness of the API's dependencies, and the warm standby drivers (informational)."""

    ready: bool
    checks: dict[str, str]
    warm_drivers: WarmDriversPublic | None = None


GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no or a wrong API token"},
    413: {"model": ErrorResponse, "description": "a body past SWEEPS_MAX_BODY_BYTES"},
    422: {"model": ErrorResponse, "description": "invalid input; each error names its field"},
    429: {"model": ErrorResponse, "description": "past a limit; see Retry-After"},
}
"""What any route behind the token may answer besides its own responses."""
