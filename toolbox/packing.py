"""Which trials may train together as one pack: the key a sweep groups its trials by.

Torch-free, so the sweep's driver groups configurations without importing torch; the packed
computation itself is :mod:`toolbox.packed`.
"""

from __future__ import annotations

from collections.abc import Sequence

from toolbox.config import TrialConfig
from toolbox.errors import ConfigError

PACK_SETTINGS = (
    "data.",
    "model.arch",
    "model.width",
    "model.depth",
    "model.fc_width",
    "model.norm",
    "model.groups",
    "model.activation",
    "optim.batch_size",
    "device",
)
"""Settings (dotted names; a trailing dot means the whole section) a pack's members share."""


def _shared(name: str) -> bool:
    return any(name.startswith(s) if s.endswith(".") else name == s for s in PACK_SETTINGS)


def pack_key(config: TrialConfig) -> tuple[tuple[str, object], ...]:
    """The settings that must be equal for two trials to share a pack, as a hashable key."""
    return tuple(sorted((k, v) for k, v in config.flatten().items() if _shared(k)))


def check_packable(configs: Sequence[TrialConfig]) -> None:
    """Raise unless ``configs`` can train as one pack.

    Raises:
        toolbox.errors.ConfigError: no configs, or a member differs from member 0 in a setting
            of :data:`PACK_SETTINGS` (the message names it).
    """
    if not configs:
        raise ConfigError("a pack needs at least one member")
    first = dict(pack_key(configs[0]))
    for i, config in enumerate(configs[1:], start=1):
        for name, value in pack_key(config):
            if first[name] != value:
                raise ConfigError(
                    f"pack member {i}: {name}={value!r} differs from member 0's "
                    f"{first[name]!r}; members of a pack must share {', '.join(PACK_SETTINGS)}"
                )
