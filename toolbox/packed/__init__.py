"""Packed training: K same-shape trials trained together as one model (HFTA-style fusion).

See :mod:`toolbox.packed.train` for the loop and its contract, :mod:`toolbox.packed.models`
for what members must share, :mod:`toolbox.packed.layers` and :mod:`toolbox.packed.optim` for
the packed computation.
"""

from toolbox.packed.train import MemberResult, Pack, StopMember, train_pack
from toolbox.packing import PACK_SETTINGS, check_packable, pack_key

__all__ = [
    "PACK_SETTINGS",
    "MemberResult",
    "Pack",
    "StopMember",
    "check_packable",
    "pack_key",
    "train_pack",
]
