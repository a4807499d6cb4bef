"""Helpers of the worker tests: a recording sink (the tests' observer), sweep specs, and
running a sweep."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.specs import digits_body
from workers.driver.sweep import run_sweep
from workers.errors import SinkUnavailableError
from workers.events import FINAL_TRIAL_STATUSES, TrialOutcome, TrialUpdate
from workers.spec import SweepSpec


@dataclass
class RecordingSink:
    """Records everything the driver reports; ``on_epoch`` lets a test act on an epoch.

    ``epoch_write_s`` makes each epoch's write that slow (a busy database), recorded at its end.
    With a ``journal`` file every update and epoch is also appended there, so a driver that
    replaces a killed one can start from what it had stored (:meth:`replay`), as from a
    database.
    """

    on_epoch: Callable[[RecordingSink, int, int, dict[str, float]], None] | None = None
    cancel_after_epochs: int | None = None
    epoch_write_s: float = 0.0
    updates: list[TrialUpdate] = field(default_factory=list)
    epochs: dict[int, dict[int, dict[str, float]]] = field(default_factory=dict)
    artifacts: list[tuple[int, str, bytes]] = field(default_factory=list)  # (number, path, png)
    started: list[str] = field(default_factory=list)
    ended: tuple[str, str, int | None] | None = None
    cancel_at: float | None = None
    down_since: float = 0.0
    down_until: float = 0.0
    journal: Path | None = None

    @classmethod
    def replay(cls, journal: Path) -> RecordingSink:
        """A sink holding what ``journal`` holds, appending to it from now on."""
        sink = cls()
        for line in journal.read_text().splitlines() if journal.exists() else []:
            kind, data = json.loads(line)
            if kind == "update":
                sink.trial_updated(TrialUpdate(**data))
            else:
                sink.epoch_reported(data["number"], data["epoch"], data["metrics"])
        sink.journal = journal
        return sink

    def _log(self, kind: str, data: dict[str, Any]) -> None:
        if self.journal is not None:
            with self.journal.open("a") as out:
                out.write(json.dumps([kind, data]) + "\n")

    def down_for(self, seconds: float) -> None:
        """Every report of the next ``seconds`` finds the database unreachable."""
        self.down_since = time.monotonic()
        self.down_until = self.down_since + seconds

    def _reachable(self) -> None:
        if time.monotonic() < self.down_until:
            raise SinkUnavailableError("the database is unreachable (test)")

    def sweep_started(self, experiment_path: str) -> None:
        self.started.append(experiment_path)

    def trials(self, metric: str) -> list[TrialOutcome]:
        """What a database would hold: each trial's last update, and its epochs (the first
        report of each, as the store keeps it)."""
        self._reachable()
        out = []
        for number, status in sorted(self.final_status().items()):
            epochs = self.epochs.get(number, {})
            curve = {e: m[metric] for e, m in epochs.items() if metric in m}
            params = next(u.params for u in self.updates if u.number == number and u.params)
            out.append(TrialOutcome(number, params, status, max(epochs, default=0), curve))  # type: ignore[arg-type]
        return out

    def trial_updated(self, update: TrialUpdate) -> None:
        self._reachable()
        final = self.final_status().get(update.number) in FINAL_TRIAL_STATUSES
        if not final:  # a final status is never replaced, as the store keeps it
            self.updates.append(update)
            self._log("update", update.__dict__)

    def epoch_reported(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        self._reachable()
        time.sleep(self.epoch_write_s)
        self.epochs.setdefault(number, {}).setdefault(epoch, metrics)  # the first report stays
        self._log("epoch", {"number": number, "epoch": epoch, "metrics": metrics})
        if self.on_epoch is not None:
            self.on_epoch(self, number, epoch, metrics)
        n = sum(len(e) for e in self.epochs.values())
        if self.cancel_after_epochs is not None and n >= self.cancel_after_epochs:
            self.cancel_at = self.cancel_at or time.monotonic()

    def artifact_reported(self, number: int, path: str, content: bytes) -> None:
        self._reachable()
        self.artifacts.append((number, path, content))

    def sweep_ended(self, status: str, message: str, best: int | None) -> None:
        self.ended = (status, message, best)

    def batch(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def cancel_requested(self) -> bool:
        self._reachable()
        return self.cancel_at is not None

    def final_status(self) -> dict[int, str]:
        """Each trial's last reported status, by number."""
        return {u.number: u.status for u in self.updates}

    def last_update(self, number: int) -> TrialUpdate:
        return [u for u in self.updates if u.number == number][-1]


def digits_spec(parameters: dict[str, Any], **kw: Any) -> SweepSpec:
    """The validated :func:`tests.specs.digits_body` sweep."""
    return SweepSpec.model_validate(digits_body(parameters, **kw))


def sweep(spec: SweepSpec, sink: RecordingSink, tmp: Path) -> tuple[str, str]:
    """Run ``spec`` to its end under a new sweep uid; the uid and the final status."""
    sweep_uid = uuid.uuid4().hex[:8]
    return sweep_uid, run_sweep(spec, sink, sweep_uid=sweep_uid, storage_path=str(tmp))


def alive_trial_worker_pids(address: str) -> list[int]:
    """Process ids of the live Tune trial actors (the workers running ``run_pack``)."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True)
    return [
        a.pid
        for a in actors
        if "run_pack" in (a.class_name or "") or "ImplicitFunc" in (a.class_name or "")
    ]
