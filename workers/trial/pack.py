"""The function Ray Tune runs for every Tune trial: train a pack of trials as one model.

Every Tune trial of a sweep is a pack of one or more trials (:mod:`workers.results`). Each
epoch the pack reports one result holding each trial's news under its number. With its first
epoch, its last, an epoch in which a trial ended, and otherwise at most every
:data:`CHECKPOINT_S`, it also saves a checkpoint holding every trial still training (a
single-trial checkpoint each, so a retried pack resumes them all) and how the others ended,
with the last checkpoint of each that completed or was stopped: a pack's checkpoint holds every
trial's newest state, at a constant size, and a pack writes a few per snapshot of the
experiment, whatever its epochs (a retry repeats the epochs since the last one, which the sink
keeps once). The driver turns a result into trial events (rows, curves, MLflow runs,
outcomes): :mod:`workers.driver.callbacks`.

Trials leave alone: one whose configuration is invalid fails at once, one whose loss stops
being finite is ``diverged``, one the sweep's :class:`~workers.trial.board.StoppingBoard`
names is ``stopped``, one past its epochs ``completed``; the others train on. A trial the
driver already holds as ended (``PackSetup.ended``: a resumed sweep's) is never trained again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from pydantic import ValidationError
from ray import tune

from toolbox.errors import DataUnavailableError
from workers.events import finite_metrics
from workers.private_files import private_dir
from workers.results import EPOCH, NODE, PID, REPORTS, SAMPLES, STATES, trials_of
from workers.trial.board import board_name
from workers.trial.setup import (
    DATA_SETTINGS,
    TrialSetup,
    samples_picture,
    trial_config,
    validation_message,
)

if TYPE_CHECKING:
    from toolbox.config import TrialConfig
    from toolbox.metrics import EpochMetrics
    from toolbox.packed import Pack

log = logging.getLogger(__name__)
PACK_FILE = "pack_state.pt"
PACK_VERSION = 2
RENDERED_MAX = 256
_RENDERED: dict[str, bytes] = {}
"""Augmentation pictures this worker rendered or read, by augmentation, seed and data."""
PICTURES_DIR = "sweeps-pictures"
"""Folder under a local storage path where workers keep the pictures they render, named by
the hash of what they show, for every later worker of every sweep (at most
:data:`PICTURES_KEPT`, the oldest removed first)."""
PICTURES_KEPT = 2000
CHECKPOINT_S = 1.0
"""The least time between two checkpoints of a pack (besides its first epoch's and last)."""
SCRATCH = "sweeps-pack-checkpoints"
"""Folder under the temporary directory where each worker process writes its checkpoints."""
_SWEPT = False
"""Whether this process removed the dead processes' folders of :data:`SCRATCH`."""


@dataclass(frozen=True)
class PackSetup:
    """What every pack of a sweep shares (built once by the driver).

    Attributes:
        trial: the trials' shared setup (base configuration, metric, resources).
        sweep_uid: names the sweep's stopping board.
        early_stopping: whether trials are judged by the board after each epoch.
        ended: the trials that had ended when the driver started (a resumed sweep's): never
            trained again, whatever a restored checkpoint holds.
        pictures_dir: where rendered augmentation pictures are kept for every worker
            (:data:`PICTURES_DIR` under a local storage path), or None.
    """

    trial: TrialSetup
    sweep_uid: str
    early_stopping: bool
    ended: frozenset[int] = field(default_factory=frozenset)
    pictures_dir: str | None = None


@dataclass
class _TrialState:
    """What the driver hears of one trial (cumulative, in every result)."""

    status: str = "running"
    epoch: int = 0
    message: str = ""
    curve: list[float] = field(default_factory=list)

    def as_result(self) -> dict[str, Any]:
        value = self.curve[-1] if self.curve and self.status != "diverged" else None
        return {"status": self.status, "epoch": self.epoch, "message": self.message, "value": value}


def run_pack(params: dict[str, Any], *, setup: PackSetup) -> None:
    """Train the pack ``params`` (:func:`workers.results.pack_config`) to its end."""
    import torch

    torch.set_num_threads(max(1, int(setup.trial.cpus)))
    trials = [t for t in trials_of(params) if t.number not in setup.ended]
    saved = _load_checkpoint()
    states = {t.number: _TrialState() for t in trials}
    finals: dict[int, dict[str, Any]] = {}
    for number, ended in (saved or {}).get("ended", {}).items():
        final = ended.pop("checkpoint", None)
        if final is not None:
            finals[int(number)] = final  # kept for retention, even of a trial not trained now
        if int(number) in states:
            states[int(number)] = _TrialState(**ended)
    configs: dict[int, TrialConfig] = {}
    for t in trials:
        if states[t.number].status != "running":
            continue
        try:
            configs[t.number] = trial_config(setup.trial, t.params)
        except ValidationError as err:
            states[t.number] = _TrialState("failed", 0, validation_message(err))
    active = (saved or {}).get("active", {}).items()
    resume = {int(n): c for n, c in active if int(n) in configs}
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
        states: dict[int, _TrialState],
        configs: dict[int, TrialConfig],
        resume: dict[int, dict[str, Any]],
        finals: dict[int, dict[str, Any]],
    ) -> None:
        self.setup, self.states, self.resume = setup, states, resume
        self.finals = finals  # trial number -> its last checkpoint, once it has ended
        self.numbers = list(configs)  # pack position -> trial number
        self.configs = [configs[n] for n in self.numbers]
        self.samples: dict[str, bytes] = {}
        self.saved_at = float("-inf")  # time.monotonic() of this attempt's last checkpoint
        self.saved_ended: set[int] = set()  # the trials whose end a checkpoint holds
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
            for n in self.numbers:
                self.states[n] = _TrialState("failed", 0, f"{err} {DATA_SETTINGS}")
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
        """Trial outcomes of the epoch; the board's stops, dropped from the pack at once."""
        metric = self.setup.trial.metric
        for pos, metrics in reports.items():
            state = self.states[self.numbers[pos]]
            state.epoch = metrics.epoch
            value = finite_metrics(metrics.as_dict()).get(metric)
            if value is not None:  # a trial whose metric is not finite has diverged
                state.curve.append(value)
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
            and self.states[self.numbers[pos]].status == "running"
        ]
        stops: list[int] = ray.get(self.board.report.remote(values)) if values else []
        for number in stops:
            pos = self.numbers.index(number)
            epoch = self.states[number].epoch
            message = f"stopped early after epoch {epoch} ({metric})"
            self.finals[number] = pack.checkpoint(pos)
            pack.stop(pos, "stopped", message)
            self.states[number].status, self.states[number].message = "stopped", message
        pack.drop_inactive()

    def _report(self, reports: dict[int, EpochMetrics], pack: Pack | None) -> None:
        import torch

        result: dict[str, Any] = {
            EPOCH: max((s.epoch for s in self.states.values()), default=0),
            PID: os.getpid(),
            NODE: self.node,
            STATES: {str(n): s.as_result() for n, s in self.states.items()},
            REPORTS: {
                str(self.numbers[pos]): {**finite_metrics(m.as_dict()), EPOCH: m.epoch}
                for pos, m in reports.items()
            },
        }
        if self.samples:
            result[SAMPLES], self.samples = self.samples, {}
        ended = {n for n, s in self.states.items() if s.status != "running"}
        due = pack is not None and (
            pack.done
            or not ended <= self.saved_ended  # a trial's end is checkpointed at once
            or time.monotonic() - self.saved_at >= CHECKPOINT_S
        )
        if pack is None or not due:
            tune.report(result)
            return
        self.saved_at, self.saved_ended = time.monotonic(), ended
        state = {
            "version": PACK_VERSION,
            "active": {str(self.numbers[m.key]): pack.checkpoint(m.key) for m in pack.members},
            "ended": {
                **{str(n): {"checkpoint": c} for n, c in self.finals.items()
                   if n not in self.states},
                **{str(n): {"status": s.status, "epoch": s.epoch, "message": s.message,
                            "curve": s.curve, "checkpoint": self.finals.get(n)}
                   for n, s in self.states.items() if s.status != "running"},
            },
        }  # fmt: skip
        with _scratch() as tmp:
            torch.save(state, Path(tmp, PACK_FILE))
            # report() copies the directory to the run's storage before returning.
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    def _pictures(self) -> dict[str, bytes]:
        """Each new trial's augmentation picture; none for resumed trials, which sent theirs.
        The picture is a function of the augmentation, seed and data alone (the seed only with
        augmentation on: without, every seed shows the same images twice), so each is rendered
        once (0.3-1 s of CPU) and kept, in this worker and under ``pictures_dir``."""
        pictures: dict[str, bytes] = {}
        for number, cfg in zip(self.numbers, self.configs, strict=True):
            if number in self.resume:
                continue
            seed = cfg.seed if cfg.augment.enabled else None
            same = f"{cfg.augment.model_dump_json()} {seed} {cfg.data.model_dump_json()}"
            if same not in _RENDERED:
                if len(_RENDERED) >= RENDERED_MAX:
                    _RENDERED.clear()
                _RENDERED[same] = _kept_picture(self.setup.pictures_dir, same, cfg)
            if _RENDERED[same]:
                pictures[str(number)] = _RENDERED[same]
        return pictures


def _kept_picture(folder: str | None, same: str, cfg: TrialConfig) -> bytes:
    """The picture of ``cfg`` (``same`` says what it shows): read from ``folder`` when a worker
    rendered it before, else rendered and left there (written whole, by rename). A folder
    that cannot be used only costs the rendering."""
    if folder is None:
        return samples_picture(cfg)
    path = Path(folder, hashlib.sha256(same.encode()).hexdigest()[:32] + ".png")
    with contextlib.suppress(OSError):
        return path.read_bytes()
    picture = samples_picture(cfg)
    if not picture:
        return picture
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(picture)
        os.replace(tmp, path)
        kept = sorted(path.parent.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for old in kept[: max(0, len(kept) - PICTURES_KEPT)]:
            old.unlink(missing_ok=True)
    except OSError as err:
        log.warning("cannot keep the augmentation picture under %s: %s", folder, err)
    return picture


@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    """An empty folder of this process's own for one checkpoint, emptied after use. Folders
    of processes that no longer run (a worker killed mid-report) are removed first, so a kill
    leaves at most one checkpoint behind, until the next pack starts on the node."""
    global _SWEPT
    root = private_dir(Path(tempfile.gettempdir(), SCRATCH))  # in /tmp: anyone may take the name
    mine = root / str(os.getpid())
    if not _SWEPT:
        for other in root.iterdir():
            if other.name.isdigit() and not _alive(int(other.name)):
                shutil.rmtree(other, ignore_errors=True)
        _SWEPT = True
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(mode=0o700)
    try:
        yield str(mine)
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
