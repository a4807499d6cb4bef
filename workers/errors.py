"""Errors of the workers layer, under the project's root :class:`~toolbox.errors.SweepsError`."""

from toolbox.errors import SweepsError


class RayJobsError(SweepsError):
    """Ray's Jobs API refused a request or could not be reached; the message says which."""


class SinkUnavailableError(SweepsError):
    """The sink cannot store a report for now (its database is unreachable): the driver retries
    for a while, then gives up without ending the sweep, so that the sweep is resumed later."""


class TrackingError(SweepsError):
    """MLflow could not take a request (down, timed out, failing): worth trying again."""


class TrackingRejectedError(TrackingError):
    """MLflow answered that it will not take the request (a 4xx): sending it again is useless."""


class ClusterLostError(SweepsError):
    """The Ray cluster the driver ran on went away (its head restarted, or it is unreachable):
    the driver gives up without ending the sweep, so that the sweep is resumed."""


class UnsafePathError(SweepsError):
    """A directory, secret file or socket is not this user's own (a symbolic link, another uid's,
    open to others): nothing is written, bound or connected there; the message names the path
    and the fix."""
