"""What a packed sweep's driver and its packs exchange: pack trials, members, result keys.

A packed sweep's Tune trial is a pack, configured ``{PACK: {MEMBERS: [{number, params}]}}``
(planned by :mod:`workers.driver.packs`, trained by :mod:`workers.trial.pack`). Each result of
a pack carries, under :data:`MEMBER_STATES`, every member's status, last epoch and message;
under :data:`REPORTS` the metrics of the epoch each member just completed; under
:data:`CURVES` (when early stopping is on) every member's metric per epoch, from which a
resumed driver seeds its stopping board. Members are named by their number as a string
(results cross JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PACK = "pack"
"""The one parameter of a packed sweep's Tune trials."""
MEMBERS = "members"
MEMBER_STATES = "member_states"
REPORTS = "member_reports"
CURVES = "member_curves"


@dataclass(frozen=True)
class Member:
    """One trial of a pack: its number (1-based, unique in the sweep) and its parameters."""

    number: int
    params: dict[str, Any]

    def as_config(self) -> dict[str, Any]:
        """The member as it is stored in its pack's Tune config."""
        return {"number": self.number, "params": self.params}


def is_pack(tune_config: dict[str, Any]) -> bool:
    """Whether a Tune trial's config is a pack's."""
    return isinstance(tune_config.get(PACK), dict)


def members_of(tune_config: dict[str, Any]) -> list[Member]:
    """The members of a pack trial, from its Tune config."""
    return [Member(int(m["number"]), dict(m["params"])) for m in tune_config[PACK][MEMBERS]]


def member_key(pack_trial_id: str, number: int) -> str:
    """A member's trial key: unique in the sweep, its number last (``events.trial_number``)."""
    return f"{pack_trial_id}m_{number - 1:05d}"
