"""Packed training: K trials of one shape trained as one model, each with its own curve.

:class:`Pack` holds the members (built from their configs, or from single-trial checkpoints),
the :class:`~toolbox.packed.models.PackedNet` and the :class:`~toolbox.packed.optim.PackedSGD`.
Each epoch is ``toolbox.train``'s loop for every member at once: every member shuffles the
training split with its own generator, gathers the same number of samples ahead, augments
them with its own settings and stream, normalizes them its own way, and every minibatch is one
forward and backward pass of the packed model (the sum of the members' mean losses, whose
gradient in member k is member k's own) and one packed SGD step. Loss and accuracy
accumulate per member on the device and are read once per epoch, with evaluation.

A member trained in a pack gives the curve the same config and seed give alone with
:func:`toolbox.train.train`, up to float rounding (the packed kernels sum in other orders):
on the CPU every random draw is the same. On a GPU, dropout masks come from the member's own
CUDA generator through ``bernoulli_``, not torch's fused dropout kernel, so they are different
(equally distributed) draws.

Members leave without disturbing the others: a member whose epoch loss is not finite is
marked ``diverged``, one whose callback raises :class:`StopMember` (or that :meth:`Pack.stop`
names) ``stopped``, one past its epochs ``completed``. A masked member's loss is left out and
its parameters, velocities, statistics and random streams stay as they were; at the end of
the epoch it is dropped from the pack (the packed tensors shrink). Its curve and outcome stay
in :meth:`Pack.results`; :meth:`Pack.checkpoint` unpacks a member into a single-trial
checkpoint that ``toolbox.train.train(resume=...)`` continues, and a pack can be built from
such checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

import toolbox.train as solo
from toolbox.config import TrialConfig
from toolbox.data import DataSplit, limit_train, load_split
from toolbox.metrics import EpochMetrics
from toolbox.models import build_model
from toolbox.optim import build_optimizer
from toolbox.packed.grad_noise import PackedGradNoise
from toolbox.packed.layers import MemberModule, PackContext
from toolbox.packed.members import (
    Member,
    Normalizers,
    augment_members,
    checkpoint_rng,
    dropout_generator,
    epoch_orders,
    fitted,
)
from toolbox.packed.models import PackedNet
from toolbox.packed.optim import PackedSGD
from toolbox.packing import check_packable

MemberOutcome = Literal["completed", "diverged", "stopped"]
"""How a member ended: its epochs done, its loss non-finite, or stopped (early stopping)."""
MemberCallback = Callable[[int, EpochMetrics, solo.Checkpoint], None]
"""``on_epoch(key, metrics, checkpoint)`` after each member's completed epoch; raising
:class:`StopMember` stops that member only, any other exception stops the pack."""


class StopMember(Exception):
    """Raised by a member's epoch callback to stop that member (early stopping)."""


@dataclass
class MemberResult:
    """How one member ended and its per-epoch curve (see ``toolbox.train.TrainResult``).

    Attributes:
        key: the member's position in the list the pack was built from.
        outcome: see :data:`MemberOutcome`.
        history: metrics of every completed epoch, resumed ones included.
        message: why it diverged or stopped; empty when it completed.
    """

    key: int
    outcome: MemberOutcome
    history: list[EpochMetrics] = field(default_factory=list)
    message: str = ""


class _ParamPair(NamedTuple):
    """A packed parameter and the single-trial parameter it holds a member of."""

    name: str  # the packed parameter's name in the packed model
    layer: MemberModule  # its layer
    attr: str  # its name in the layer, and the single-trial parameter's in its layer
    solo: torch.nn.Parameter


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def _seed_globals(seed: int, device: torch.device) -> None:
    """Seed the global generators a single trial on ``device`` draws from, as its
    ``torch.manual_seed`` does: the CPU's, and ``device``'s on CUDA. Other devices' are left
    alone (``fork_rng`` restores only these)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)


class Pack:
    """K trials of one shape (see :func:`toolbox.packing.check_packable`) as one model.

    Building a pack leaves torch's global random state as it was.

    Args:
        configs: one trial per member; member keys are their positions here.
        data: a prepared split (``data.train_size`` applies); by default each is loaded with
            ``toolbox.data.load_split``.
        resume: per member, ``None`` or a single-trial checkpoint (``toolbox.train``'s, or
            :meth:`checkpoint`'s) to continue from.

    Raises:
        toolbox.errors.ConfigError: the configs cannot share a pack, or a checkpoint is not of
            ``toolbox.train``'s version.
    """

    def __init__(
        self,
        configs: Sequence[TrialConfig],
        data: DataSplit | None = None,
        resume: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        check_packable(configs)
        first = configs[0]
        self.device = solo.resolve_device(first.device)
        if data is None:
            self.split = load_split(first.data, self.device)
        else:
            self.split = solo._on_device(limit_train(data, first.data.train_size), self.device)
        self.batch_size = first.optim.batch_size
        self._normalizers = fitted([c.input_norm for c in configs], self.split.train_x)
        resumes = list(resume) if resume is not None else [None] * len(configs)
        self.results: dict[int, MemberResult] = {}
        self.members: list[Member] = []
        self._weights: dict[tuple[int | bool, ...], torch.Tensor] = {}  # see _loss_weights
        solos, optimizers = [], []
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            for key, (config, ckpt) in enumerate(zip(configs, resumes, strict=True)):
                state = self._single(config, ckpt)
                self.members.append(self._member(key, state))
                solos.append(state.model)
                optimizers.append(state.optimizer)
        ctx = PackContext([m.dropout for m in self.members], [True] * len(configs))
        in_shape, classes = self.split.in_shape, self.split.num_classes
        self.model = PackedNet([c.model for c in configs], in_shape, classes, ctx)
        self.model.to(self.device).load_members(solos)
        self.optimizer = PackedSGD(self.model, [c.optim for c in configs])
        self._load_velocities(solos, optimizers)
        self._normalize = Normalizers([m.normalize for m in self.members])
        for member in self.members:
            if member.finished_epochs:
                self.stop(member.key, "completed")
        self.drop_inactive()

    def _single(self, config: TrialConfig, ckpt: dict[str, Any] | None) -> solo._State:
        """Member state as ``toolbox.train.train`` sets it up (and resumes it)."""
        _seed_globals(config.seed, self.device)
        model = build_model(config.model, self.split.in_shape, self.split.num_classes)
        model.to(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(config.seed)
        state = solo._State(
            config, model, build_optimizer(model, config.optim),
            self._normalizers[config.input_norm], generator, [],
        )  # fmt: skip
        if ckpt is not None:
            state.restore(ckpt)
        return state

    def _member(self, key: int, state: solo._State) -> Member:
        return Member(
            key=key,
            config=state.config,
            generator=state.generator,
            dropout=dropout_generator(self.device),
            cpu_rng=torch.get_rng_state(),
            normalize=state.normalize,
            augment=solo._augmenter(state.config),
            history=list(state.history),
        )

    def _param_pairs(self, solo_model: torch.nn.Module) -> list[_ParamPair]:
        """Every packed parameter with its layer and the single-trial model's same parameter."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        return [
            _ParamPair(names[id(param)], layer, attr, getattr(solo_layer, attr))
            for layer, solo_layer in self.model.pairs(solo_model)
            for attr, param in layer.named_parameters(recurse=False)
        ]

    def _load_velocities(self, solos: list[Any], optimizers: list[Any]) -> None:
        if not any(opt.state for opt in optimizers):
            return  # no member resumed with momentum
        per_member = [self._param_pairs(s) for s in solos]
        for i, pair in enumerate(per_member[0]):
            velocities = [
                opt.state[pairs[i].solo].get("momentum_buffer")
                for opt, pairs in zip(optimizers, per_member, strict=True)
            ]
            if any(v is not None for v in velocities):
                rows = [None if v is None else pair.layer.member_layout(pair.attr, v)
                        for v in velocities]  # fmt: skip
                self.optimizer.load_member_velocity(pair.name, rows)

    @property
    def done(self) -> bool:
        """Whether no member is left to train."""
        return not self.members

    def _index(self, key: int) -> int:
        for k, member in enumerate(self.members):
            if member.key == key:
                return k
        raise KeyError(f"member {key} is not in the pack (finished members are in results)")

    def stop(self, key: int, outcome: MemberOutcome = "stopped", message: str = "") -> None:
        """Mask member ``key`` from the next step on; it is dropped at the epoch's end.

        May be called from an epoch callback or between epochs; masking an already masked
        member keeps its first outcome.
        """
        member = self.members[self._index(key)]
        if member.active:
            member.status, member.message = outcome, message
            self.model.set_active([m.active for m in self.members])

    def drop_inactive(self) -> None:
        """Drop the masked members from the packed tensors, keeping their results."""
        keep = [k for k, m in enumerate(self.members) if m.active]
        for member in self.members:
            if not member.active:
                outcome: MemberOutcome = member.status  # type: ignore[assignment]
                self.results[member.key] = MemberResult(
                    member.key, outcome, member.history, member.message
                )
        if len(keep) == len(self.members):
            return
        self.members = [self.members[k] for k in keep]
        if keep:
            self.model.keep_members(keep)
            self.optimizer.keep_members(keep)
            self._weights.clear()
            self._normalize = Normalizers([m.normalize for m in self.members])

    def checkpoint(self, key: int) -> dict[str, Any]:
        """Member ``key`` as a single-trial checkpoint that ``toolbox.train.train(resume=)``
        (and a new pack) continue from; a deep copy."""
        k = self._index(key)
        member = self.members[k]
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            model = build_model(member.config.model, self.split.in_shape, self.split.num_classes)
            model.to(self.device)
            self.model.copy_member_into(k, model)
            optimizer = build_optimizer(model, member.config.optim)
            for pair in self._param_pairs(model):
                velocity = self.optimizer.member_velocity(pair.name, k)
                if velocity is not None:
                    velocity = pair.layer.solo_layout(pair.attr, velocity)
                    optimizer.state[pair.solo]["momentum_buffer"] = velocity
            rng = checkpoint_rng(member, self.device)
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            state = solo._State(
                member.config, model, optimizer, member.normalize, member.generator,
                member.history,
            )  # fmt: skip
            return state.checkpoint()

    def _active(self) -> list[bool]:
        return [m.active for m in self.members]

    def _loss_weights(self, batch: int, active: list[bool]) -> torch.Tensor:
        """(K*B,) d(sum of the active members' mean losses) / d(per-sample loss): 1/B for
        an active member's samples, 0 for a masked member's; kept while the pack is unchanged."""
        key = (batch, *active)
        if key not in self._weights:
            weights = torch.full((len(active), batch), 1.0 / batch, device=self.device)
            weights[[k for k, on in enumerate(active) if not on]] = 0.0
            self._weights[key] = weights.flatten()
        return self._weights[key]

    def train_epoch(self, noise: PackedGradNoise | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of every member over its freshly shuffled training split.

        Returns:
            (K,) summed training losses and (K,) correct counts, on the device, not synced.
        """
        self.model.train()
        members, bs = self.members, self.batch_size
        x_all, y_all = self.split.train_x, self.split.train_y
        n, k = len(y_all), len(members)
        orders = epoch_orders(members, n, self.device)  # (K, n)
        augmenting = any(m.augment is not None and m.active for m in members)
        ahead = max(1, solo.AUGMENT_AHEAD // bs) * bs if augmenting else bs
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        labels = y_all[orders]  # (K, n)
        for first in range(0, n, ahead):
            idx = orders[:, first : first + ahead]  # (K, A)
            xs = x_all.index_select(0, idx.flatten()).view(*idx.shape, *x_all.shape[1:])
            augment_members(xs, members)  # (K, A, C, H, W)
            for start in range(first, first + idx.shape[1], bs):
                x = xs[:, start - first : start - first + bs]  # (K, B, C, H, W)
                y = labels[:, start : start + bs]  # (K, B)
                logits = self.model(self._normalize(x))  # (K, B, classes)
                per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                active = self._active()  # a forward hook may have stopped a member
                # The gradient of the sum of the active members' mean losses; a masked member's
                # loss (NaN, maybe) gets weight 0 and reaches none of the others' gradients.
                per_sample.backward(self._loss_weights(y.shape[1], active))
                if noise is not None:
                    noise.add()
                self.optimizer.step(active)
                self.optimizer.zero_grad()
                loss_sum += per_sample.detach().view(k, -1).sum(dim=1)
                correct += (logits.detach().argmax(dim=2) == y).sum(dim=1)
        return loss_sum, correct

    @torch.no_grad()
    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,) summed validation losses and correct counts in eval mode, not synced."""
        self.model.eval()
        k = len(self.members)
        x_all, y_all = self.split.val_x, self.split.val_y
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        step = max(1, solo.EVAL_BATCH_SIZE // k)  # about as many samples as a trial's batch
        for start in range(0, len(y_all), step):
            xb, yb = x_all[start : start + step], y_all[start : start + step]
            logits = self.model(self._normalize.shared(xb))  # (K, B, classes)
            targets = yb.expand(k, -1).flatten()
            loss = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
            loss_sum += loss.view(k, -1).sum(dim=1)
            correct += (logits.argmax(dim=2) == yb).sum(dim=1)
        return loss_sum, correct

    def run_epoch(self, on_epoch: MemberCallback | None = None) -> None:
        """Train every active member one epoch, report each, then drop the masked ones."""
        solo._synchronize(self.device)
        t0 = time.perf_counter()
        measured = [m.config.measure_grad_noise for m in self.members]
        noise = PackedGradNoise(self.model.parameters()) if any(measured) else None
        train_sums = self.train_epoch(noise)
        solo._synchronize(self.device)
        train_seconds = time.perf_counter() - t0
        val_sums = self.evaluate()
        noise_value = noise.value() if noise is not None else None
        rows = [*train_sums, *val_sums, *([] if noise_value is None else [noise_value])]
        # The one host-device synchronization of the epoch.
        values = torch.stack([r.to(torch.float64) for r in rows]).T.tolist()
        epoch_seconds = time.perf_counter() - t0
        n_train, n_val = len(self.split.train_y), len(self.split.val_y)
        for member, (train_loss, train_ok, val_loss, val_ok, *grad_noise) in zip(
            list(self.members), values, strict=True
        ):
            if not member.active:
                continue
            epoch = len(member.history) + 1
            if not solo._all_finite(train_loss, val_loss):
                message = solo.divergence_message(epoch, train_loss / n_train, val_loss / n_val)
                self.stop(member.key, "diverged", message)
                continue
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss / n_train,
                train_accuracy=train_ok / n_train,
                val_loss=val_loss / n_val,
                val_accuracy=val_ok / n_val,
                epoch_seconds=epoch_seconds,
                samples_per_second=n_train / train_seconds,
                grad_noise=grad_noise[0] if grad_noise and member.config.measure_grad_noise
                else None,
            )  # fmt: skip
            member.history.append(metrics)
            self._report(member, metrics, on_epoch)
        self.drop_inactive()

    def _report(self, member: Member, metrics: EpochMetrics, on_epoch: MemberCallback | None):
        if on_epoch is not None:
            try:
                on_epoch(member.key, metrics, lambda: self.checkpoint(member.key))
            except StopMember as stop:
                self.stop(
                    member.key, "stopped", str(stop) or f"stopped after epoch {metrics.epoch}"
                )
                return
        if member.finished_epochs:
            self.stop(member.key, "completed")


def train_pack(
    configs: Sequence[TrialConfig],
    on_epoch: MemberCallback | None = None,
    resume: Sequence[dict[str, Any] | None] | None = None,
    data: DataSplit | None = None,
) -> list[MemberResult]:
    """Train ``configs`` as one pack until every member completed, diverged or stopped.

    Args:
        configs: the members (see :class:`Pack`).
        on_epoch: called after each member's completed epoch (see :data:`MemberCallback`).
        resume: per member, ``None`` or a single-trial checkpoint to continue from.
        data: a prepared split; by default loaded from the configs' data settings.

    Returns:
        One result per config, in their order.
    """
    pack = Pack(configs, data=data, resume=resume)
    while not pack.done:
        pack.run_epoch(on_epoch)
    return [pack.results[key] for key in range(len(configs))]
