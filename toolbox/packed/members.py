"""What each member of a pack owns beyond its weights: data order, augmentation, input
normalization, random streams and its curve, built as ``toolbox.train`` builds a trial's.

Member k's shuffling and augmentation draw from its own device generator seeded with its seed,
its dropout masks from its own generator holding what torch's global generator holds in a
single-trial run after initialization (on the CPU), so each member consumes exactly the random
numbers the same trial alone would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from toolbox.config import InputNorm, TrialConfig
from toolbox.metrics import EpochMetrics
from toolbox.preprocess import InputNormalizer

MemberStatus = Literal["active", "completed", "diverged", "stopped"]
"""``active`` members train; the others are masked until the epoch boundary drops them."""


@dataclass
class Member:
    """One trial of a pack.

    Attributes:
        key: the member's position in the list the pack was built from (stable across drops).
        config: the trial's configuration.
        generator: shuffling and augmentation, as ``toolbox.train``'s device generator.
        dropout: dropout and DropConnect masks (torch's global generator in a single trial).
        cpu_rng: the global CPU generator's state a single-trial checkpoint carries.
        normalize: the trial's input normalization.
        augment: the trial's augmenter, ``None`` without augmentation.
        history: the member's curve, resumed epochs included.
        status: whether it trains, and if not, why.
        message: why it diverged or stopped; empty otherwise.
    """

    key: int
    config: TrialConfig
    generator: torch.Generator
    dropout: torch.Generator
    cpu_rng: torch.Tensor
    normalize: InputNormalizer
    augment: Callable[..., torch.Tensor] | None
    history: list[EpochMetrics] = field(default_factory=list)
    status: MemberStatus = "active"
    message: str = ""

    @property
    def active(self) -> bool:
        """Whether the member still trains."""
        return self.status == "active"

    @property
    def finished_epochs(self) -> bool:
        """Whether every configured epoch is in the history."""
        return len(self.history) >= self.config.epochs


def dropout_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` holding the current state of torch's global one there."""
    generator = torch.Generator(device=device)
    if device.type == "cuda":
        generator.set_state(torch.cuda.get_rng_state(device))
    else:
        generator.set_state(torch.get_rng_state())
    return generator


class Normalizers:
    """The members' input normalizations, applied to a (K, B, C, H, W) batch in one call per
    distinct normalizer (members with the same mode and statistics share one)."""

    def __init__(self, normalizers: Sequence[InputNormalizer]) -> None:
        """Args: normalizers: member k's at ``[k]``."""
        self.groups: list[tuple[InputNormalizer, list[int]]] = []
        for k, norm in enumerate(normalizers):
            for shared, members in self.groups:
                if _same(shared, norm):
                    members.append(k)
                    break
            else:
                self.groups.append((norm, [k]))
        self.members = len(normalizers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize member k's images ``x[k]`` with member k's normalizer; same shape out."""
        if len(self.groups) == 1:
            return _per_image(self.groups[0][0], x)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for norm, members in self.groups:
            idx = torch.tensor(members, device=x.device)
            out.index_copy_(0, idx, _per_image(norm, x.index_select(0, idx)))
        return out

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize one batch ``x`` (B, C, H, W) for every member: (K, B, C, H, W)."""
        if len(self.groups) == 1:
            return self.groups[0][0](x).unsqueeze(0).expand(self.members, *x.shape)
        rows: list[torch.Tensor] = [x] * self.members
        for norm, members in self.groups:
            normed = norm(x)
            for k in members:
                rows[k] = normed
        return torch.stack(rows)


def _per_image(norm: InputNormalizer, x: torch.Tensor) -> torch.Tensor:
    """``norm`` on (..., C, H, W) images: per-instance statistics need one batch dimension;
    the other modes broadcast (per channel at most) over any leading dimensions."""
    if norm.mode == "per_instance":
        return norm(x.flatten(0, -4)).view(x.shape)
    return norm(x)


def _same(a: InputNormalizer, b: InputNormalizer) -> bool:
    if a.mode != b.mode:
        return False
    if a.mean is None or b.mean is None or a.std is None or b.std is None:
        return a.mean is None and b.mean is None
    return torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


def fitted(modes: Sequence[InputNorm], train_x: torch.Tensor) -> dict[str, InputNormalizer]:
    """One normalizer per distinct mode, fitted on the training images once."""
    return {mode: InputNormalizer.fit(mode, train_x) for mode in dict.fromkeys(modes)}


def epoch_orders(members: Sequence[Member], n: int, device: torch.device) -> torch.Tensor:
    """(K, n): each active member's shuffled order, drawn from its generator as
    ``toolbox.train.train_epoch`` draws it; masked members draw nothing (identity order)."""
    orders = torch.empty(len(members), n, dtype=torch.long, device=device)
    for row, member in zip(orders, members, strict=True):
        if member.active:
            torch.randperm(n, generator=member.generator, out=row)
        else:
            torch.arange(n, out=row)
    return orders


def augment_members(xs: torch.Tensor, members: Sequence[Member]) -> None:
    """Augment member k's gathered images ``xs[k]`` (A, C, H, W) in place with its augmenter
    and generator, one call per augmenting member, as ``toolbox.train`` calls it."""
    for k, member in enumerate(members):
        if member.augment is None or not member.active:
            continue
        out = member.augment(xs[k], generator=member.generator, inplace=True)
        if out.data_ptr() != xs[k].data_ptr():
            xs[k].copy_(out)


def checkpoint_rng(member: Member, device: torch.device) -> dict[str, Any]:
    """The global generator states a single-trial checkpoint of ``member`` holds."""
    if device.type == "cuda":
        return {"torch": member.cpu_rng, "cuda": member.dropout.get_state()}
    return {"torch": member.dropout.get_state(), "cuda": None}
