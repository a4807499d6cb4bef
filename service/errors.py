"""The service's errors, under :class:`toolbox.errors.SweepsError`.

Routes translate them into HTTP responses (see :mod:`service.api.app`); nothing below the routes
raises ``HTTPException``.
"""

from __future__ import annotations

from toolbox.errors import SweepsError


class ServiceError(SweepsError):
    """Base class of the service's errors."""


class StorageError(ServiceError):
    """The database failed (wraps ``SQLAlchemyError``)."""


class NotFoundError(ServiceError):
    """A sweep or trial does not exist."""


class SweepNotFoundError(NotFoundError):
    """No sweep has this id."""


class TrialNotFoundError(NotFoundError):
    """The sweep has no trial with this number."""


class ConflictError(ServiceError):
    """The request conflicts with the stored state."""


class IdempotencyConflictError(ConflictError):
    """An ``Idempotency-Key`` was reused with a different request body."""


class SweepFinishedError(ConflictError):
    """The sweep is already final, so it cannot change (e.g. be cancelled)."""


class DispatchError(ServiceError):
    """A sweep's Ray job could not be submitted, queried or stopped."""


class InputLimitError(ServiceError):
    """A well-formed request asks for more than this deployment allows (422); ``field`` is
    where, the message names the limit and the fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class TooManyError(ServiceError):
    """Too many requests, open sweeps or held long polls right now (429); ``retry_after``
    seconds until it is worth trying again, when known."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
