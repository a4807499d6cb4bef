"""The project's one error hierarchy, rooted in :class:`SweepsError`.

`toolbox/` is the bottom layer, so the root lives here; `workers/` and `service/` subclass it.
"""


class SweepsError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SweepsError, ValueError):
    """A setting is invalid; the message names the field and the fix."""


class DataUnavailableError(SweepsError):
    """A data set is missing and cannot be downloaded; the message says how to provision it."""
