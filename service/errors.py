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
