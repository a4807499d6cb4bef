"""HTTP translation of errors: the service's own (404, 409, 429, 503) and request validation and
limits (422).

A 422 body is ``{"detail": [{"field", "message", "loc", "type"}]}``: ``field`` is the dotted
place in the request, ``message`` says what to change. Inputs are never echoed back, so a
NaN in a request cannot break the JSON of its answer.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.schemas import SweepCreate
from service.errors import (
    ConflictError,
    DispatchError,
    InputLimitError,
    NotFoundError,
    ServiceError,
    StorageError,
    TooManyError,
)

_STATUS: list[tuple[type[ServiceError], int]] = [
    (NotFoundError, status.HTTP_404_NOT_FOUND),
    (ConflictError, status.HTTP_409_CONFLICT),
    (StorageError, status.HTTP_503_SERVICE_UNAVAILABLE),
    (DispatchError, status.HTTP_502_BAD_GATEWAY),
]
_SOURCES = ("body", "query", "path", "header", "cookie")
_MEMBER_TAG = re.compile(r"^([A-Z]\w*|function-\w+\[.*\])$")
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")
PARAMETER_FORMS = (
    "write {value: v}, {values: [v1, v2]} or "
    "{distribution: uniform|log_uniform_values|int_uniform, min: a, max: b}"
)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if isinstance(exc, InputLimitError):
        loc = ["body", *exc.field.split(".")]
        item = {"field": exc.field, "message": str(exc), "loc": loc, "type": "limit"}
        return JSONResponse({"detail": [item]}, status_code=422)
    if isinstance(exc, TooManyError):
        after = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return JSONResponse({"detail": str(exc)}, status_code=429, headers=after)
    code = next((c for kind, c in _STATUS if isinstance(exc, kind)), 500)
    return JSONResponse({"detail": str(exc)}, status_code=code)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    items = [_item(e) for e in _pick_union_members(list(exc.errors()))]
    unique = list({(i["field"], i["message"]): i for i in items}.values())
    return JSONResponse({"detail": unique}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _pick_union_members(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of a union's failed members (FixedParam, ChoiceParam, RangeParam), keep the closest."""
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err["loc"])
        tag_at = next((i for i, p in enumerate(loc) if _is_tag(p)), None)
        if tag_at is None:
            out.append(err)
            continue
        groups.setdefault(loc[:tag_at], {}).setdefault(loc[tag_at], []).append(err)
    for prefix, members in groups.items():
        best = min(members.values(), key=len)
        if all(e["type"] in ("missing", "extra_forbidden") for e in best):
            unknown = sorted({str(e["loc"][-1]) for e in best if e["type"] == "extra_forbidden"})
            extra = f" (unknown keys: {', '.join(unknown)})" if unknown else ""
            out.append(
                {
                    "loc": prefix,
                    "msg": f"not a parameter: {PARAMETER_FORMS}{extra}",
                    "type": "parameter_form",
                }
            )
        else:
            out += [{**e, "loc": tuple(p for p in e["loc"] if not _is_tag(p))} for e in best]
    return out


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and bool(_MEMBER_TAG.match(part))


def _item(err: dict[str, Any]) -> dict[str, Any]:
    loc = list(err["loc"])
    path = [str(p) for p in (loc[1:] if loc and loc[0] in _SOURCES else loc)]
    message = str(err["msg"]).replace("Value error, ", "")
    field = ".".join(path)
    named = _FIELD_PREFIX.match(message)
    if named and not field:  # a whole-body check names the field itself: "parameters: ..."
        field = named.group(1)
    if err["type"] == "extra_forbidden":
        message = _unknown_field(loc)
    elif err["type"] == "missing":
        message = f"'{path[-1] if path else 'body'}' is required; add it"
    return {"field": field or "body", "message": message, "loc": loc, "type": err["type"]}


def _unknown_field(loc: list[Any]) -> str:
    name = str(loc[-1])
    known = _known_fields(loc[1:-1]) if loc and loc[0] == "body" else []
    near = difflib.get_close_matches(name, known, n=2)
    hint = f"did you mean {' or '.join(near)}?" if near else "remove it"
    allowed = f" (allowed: {', '.join(known)})" if known else ""
    return f"unknown field '{name}'; {hint}{allowed}"


def _known_fields(path: list[Any]) -> list[str]:
    """Field names of the request model found at ``path``, or [] when not a model."""
    model: type[BaseModel] | None = SweepCreate
    for part in path:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_model else None  # type: ignore[assignment]
    return sorted(model.model_fields) if model else []
