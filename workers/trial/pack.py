"""The function Ray Tune runs for a pack: train its members as one model, report each.

A packed sweep's Tune trial is a pack (:mod:`workers.driver.packs`); every epoch it reports
one result holding each member's news under its number, and one checkpoint holding every
member still training (a single-trial checkpoint each, so a retried pack resumes them all)
and how the others ended, with the last checkpoint of each that completed or was stopped: a
pack's checkpoint holds every member's newest state, at a constant size. The driver turns a
result into member trials (own rows, curves, MLflow runs, outcomes):
:mod:`workers.driver.members`.

Members leave alone: one whose configuration is invalid fails at once, one whose loss stops
being finite is ``diverged``, one the sweep's :class:`~workers.trial.board.StoppingBoard`
names is ``stopped``, one past its epochs ``completed``; the others train on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from pydantic import ValidationError
from ray import tune

from toolbox.errors import DataUnavailableError
from workers.events import finite_metrics
from workers.packing import CURVES, MEMBER_STATES, REPORTS, members_of
from workers.trial.board import board_name
from workers.trial.trainable import (
    EPOCH,
    PID,
    SAMPLES,
    TrialSetup,
    _samples,
    _validation_message,
    trial_config,
)

if TYPE_CHECKING:
    from toolbox.config import TrialConfig
    from toolbox.metrics import EpochMetrics
    from toolbox.packed import Pack

log = logging.getLogger(__name__)
PACK_FILE = "pack_state.pt"
PACK_VERSION = 1
RENDERED_MAX = 256
_RENDERED: dict[str, bytes] = {}
"""Augmentation pictures this worker rendered, by augmentation, seed and data."""


@dataclass(frozen=True)
class PackSetup:
    """What every pack of a sweep shares (built once by the driver).

    Attributes:
        trial: the members' shared setup (base configuration, metric, resources).
        sweep_uid: names the sweep's stopping board.
        early_stopping: whether members are judged by the board after each epoch.
    """

    trial: TrialSetup
    sweep_uid: str
    early_stopping: bool


@dataclass
class _MemberState:
    """What the driver hears of one member (cumulative, in every result)."""

    status: str = "running"
    epoch: int = 0
    message: str = ""
    curve: list[float] | None = None

    def as_result(self) -> dict[str, Any]:
        value = self.curve[-1] if self.curve and self.status != "diverged" else None
        return {"status": self.status, "epoch": self.epoch, "message": self.message, "value": value}


def run_pack(params: dict[str, Any], *, setup: PackSetup) -> None:
    """Train the pack ``params`` (``{"pack": {"members": [...]}}``) to its end."""
    import torch

    torch.set_num_threads(max(1, int(setup.trial.cpus)))
    members = members_of(params)
    saved = _load_checkpoint()
    states = {m.number: _MemberState(curve=[]) for m in members}
    finals: dict[int, dict[str, Any]] = {}
    for number, ended in (saved or {}).get("ended", {}).items():
        final = ended.pop("checkpoint", None)
        if final is not None:
            finals[int(number)] = final
        states[int(number)] = _MemberState(**ended)
    configs: dict[int, TrialConfig] = {}
    for m in members:
        if states[m.number].status != "running":
            continue
        try:
            configs[m.number] = trial_config(setup.trial, m.params)
        except ValidationError as err:
            states[m.number] = _MemberState("failed", 0, _validation_message(err))
    resume = {int(n): c for n, c in (saved or {}).get("active", {}).items()}
    for number, ckpt in resume.items():
        history = ckpt.get("history", [])
        states[number].epoch = len(history)
        states[number].curve = [
            v for h in history if (v := finite_metrics(h).get(setup.trial.metric)) is not None
        ]
    _PackRun(setup, states, configs, resume, finals).run()


class _PackRun:
    """One attempt at a pack: builds it, trains epoch by epoch, reports and checkpoints."""

    def __init__(
        self,
        setup: PackSetup,
        states: dict[int, _MemberState],
        configs: dict[int, TrialConfig],
        resume: dict[int, dict[str, Any]],
        finals: dict[int, dict[str, Any]],
    ) -> None:
        self.setup, self.states, self.resume = setup, states, resume
        self.finals = finals  # member number -> its last checkpoint, once it has ended
        self.numbers = list(configs)  # pack position -> member number
        self.configs = [configs[n] for n in self.numbers]
        self.samples: dict[str, bytes] = {}
        self.node = ray.get_runtime_context().get_node_id()
        self.board = ray.get_actor(board_name(setup.sweep_uid)) if setup.early_stopping else None

    def run(self) -> None:
        from toolbox.packed import Pack

        if not self.configs:
            self._report({}, None)
            return
        try:
            pack = Pack(self.configs, resume=[self.resume.get(n) for n in self.numbers])
        except DataUnavailableError as err:
            where = "(data.data_dir and data.download are SWEEPS_DATA_DIR, SWEEPS_DATA_DOWNLOAD)"
            for n in self.numbers:
                self.states[n] = _MemberState("failed", 0, f"{err} {where}")
            self._report({}, None)
            return
        self.samples = self._pictures()
        if self.board is not None and self.resume:  # a retried pack: the board may be new
            self.board.seed.remote({str(n): self.states[n].curve for n in self.numbers})
        reports: dict[int, EpochMetrics] = {}

        def collect(pos: int, metrics: EpochMetrics, checkpoint: Callable[[], Any]) -> None:
            reports[pos] = metrics
            if metrics.epoch >= self.configs[pos].epochs:  # its last: keep what it ends as
                self.finals[self.numbers[pos]] = checkpoint()

        while not pack.done:
            reports.clear()
            pack.run_epoch(collect)
            self._judge(pack, reports)
            self._report(dict(reports), pack)

    def _judge(self, pack: Pack, reports: dict[int, EpochMetrics]) -> None:
        """Member outcomes of the epoch; the board's stops, dropped from the pack at once."""
        metric = self.setup.trial.metric
        for pos, metrics in reports.items():
            state = self.states[self.numbers[pos]]
            state.epoch = metrics.epoch
            value = finite_metrics(metrics.as_dict()).get(metric)
            if value is not None:  # a member whose metric is not finite has diverged
                state.curve = [*(state.curve or []), value]
        for pos, result in pack.results.items():
            state = self.states[self.numbers[pos]]
            if state.status == "running":
                state.status, state.message = result.outcome, result.message
        if self.board is None or not reports:
            return
        values = [
            (self.numbers[pos], m.epoch, value)
            for pos, m in reports.items()
            if (value := finite_metrics(m.as_dict()).get(metric)) is not None
        ]
        stops: list[int] = ray.get(self.board.report.remote(values))
        for number in stops:
            pos = self.numbers.index(number)
            if self.states[number].status == "running":
                epoch = self.states[number].epoch
                message = f"stopped early after epoch {epoch} ({self.setup.trial.metric})"
                self.finals[number] = pack.checkpoint(pos)
                pack.stop(pos, "stopped", message)
                self.states[number].status, self.states[number].message = "stopped", message
        pack.drop_inactive()

    def _report(self, reports: dict[int, EpochMetrics], pack: Pack | None) -> None:
        import torch

        result: dict[str, Any] = {
            EPOCH: max((s.epoch for s in self.states.values()), default=0),
            PID: os.getpid(),
            "node_id": self.node,
            MEMBER_STATES: {str(n): s.as_result() for n, s in self.states.items()},
            REPORTS: {
                str(self.numbers[pos]): {**finite_metrics(m.as_dict()), EPOCH: m.epoch}
                for pos, m in reports.items()
            },
        }
        if self.setup.early_stopping:
            result[CURVES] = {str(n): s.curve or [] for n, s in self.states.items()}
        if self.samples:
            result[SAMPLES], self.samples = self.samples, {}
        if pack is None:
            tune.report(result)
            return
        state = {
            "version": PACK_VERSION,
            "active": {str(self.numbers[m.key]): pack.checkpoint(m.key) for m in pack.members},
            "ended": {
                str(n): {"status": s.status, "epoch": s.epoch, "message": s.message,
                         "curve": s.curve, "checkpoint": self.finals.get(n)}
                for n, s in self.states.items() if s.status != "running"
            },
        }  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="pack-ckpt-") as tmp:
            torch.save(state, Path(tmp, PACK_FILE))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    def _pictures(self) -> dict[str, bytes]:
        """Each new member's augmentation picture; none for resumed members, which sent
        theirs. The picture is a function of the augmentation, seed and data alone, so this
        worker renders each once (about 0.3 s of CPU) for all its packs."""
        pictures: dict[str, bytes] = {}
        for number, cfg in zip(self.numbers, self.configs, strict=True):
            if number in self.resume:
                continue
            same = f"{cfg.augment.model_dump_json()} {cfg.seed} {cfg.data.model_dump_json()}"
            if same not in _RENDERED:
                if len(_RENDERED) >= RENDERED_MAX:
                    _RENDERED.clear()
                _RENDERED[same] = _samples(cfg).get(SAMPLES, b"")
            if _RENDERED[same]:
                pictures[str(number)] = _RENDERED[same]
        return pictures


def _load_checkpoint() -> dict[str, Any] | None:
    import torch

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        # Our own file: tensors, numbers and strings only, so it loads without unpickling.
        state: dict[str, Any] = torch.load(Path(path, PACK_FILE), weights_only=True)
    if state.get("version") != PACK_VERSION:
        raise ValueError(f"pack checkpoint version {state.get('version')!r} is not {PACK_VERSION}")
    return state
