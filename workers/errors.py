"""Errors of the workers layer, under the project's root :class:`~toolbox.errors.SweepsError`."""

from toolbox.errors import SweepsError


class RayJobsError(SweepsError):
    """Ray's Jobs API refused a request or could not be reached; the message says which."""
