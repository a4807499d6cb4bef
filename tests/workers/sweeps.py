"""Helpers of the worker tests: a recording sink (the tests' observer), sweep specs, and
running a sweep."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.specs import digits_body
from workers.driver.sweep import run_sweep
from workers.errors import SinkUnavailableError
from workers.events import TrialUpdate
from workers.spec import SweepSpec


@dataclass
class RecordingSink:
    """Records everything the driver reports; ``on_epoch`` lets a test act on an epoch.

    ``epoch_write_s`` makes each epoch's write that slow (a busy database), recorded at its end.
    """

    on_epoch: Callable[[RecordingSink, str, int, dict[str, float]], None] | None = None
    cancel_after_epochs: int | None = None
    epoch_write_s: float = 0.0
    updates: list[TrialUpdate] = field(default_factory=list)
    epochs: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    artifacts: list[tuple[str, str, bytes]] = field(default_factory=list)  # (key, path, content)
    started: list[str] = field(default_factory=list)
    ended: tuple[str, str, str | None] | None = None
    cancel_at: float | None = None
    down_since: float = 0.0
    down_until: float = 0.0

    def down_for(self, seconds: float) -> None:
        """Every report of the next ``seconds`` finds the database unreachable."""
        self.down_since = time.monotonic()
        self.down_until = self.down_since + seconds

    def _reachable(self) -> None:
        if time.monotonic() < self.down_until:
            raise SinkUnavailableError("the database is unreachable (test)")

    def sweep_started(self, experiment_path: str, over: bool = False) -> None:
        self.started.append(experiment_path)

    def trial_updated(self, update: TrialUpdate) -> None:
        self._reachable()
        self.updates.append(update)

    def epoch_reported(self, trial_key: str, epoch: int, metrics: dict[str, float]) -> None:
        self._reachable()
        time.sleep(self.epoch_write_s)
        self.epochs.setdefault(trial_key, {})[epoch] = metrics
        if self.on_epoch is not None:
            self.on_epoch(self, trial_key, epoch, metrics)
        n = sum(len(e) for e in self.epochs.values())
        if self.cancel_after_epochs is not None and n >= self.cancel_after_epochs:
            self.cancel_at = self.cancel_at or time.monotonic()

    def artifact_reported(self, trial_key: str, path: str, content: bytes) -> None:
        self._reachable()
        self.artifacts.append((trial_key, path, content))

    def sweep_ended(self, status: str, message: str, best_trial_key: str | None) -> None:
        self.ended = (status, message, best_trial_key)

    def batch(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def cancel_requested(self) -> bool:
        self._reachable()
        return self.cancel_at is not None

    def final_status(self) -> dict[str, str]:
        """Each trial's last reported status."""
        return {u.key: u.status for u in self.updates}

    def last_update(self, key: str) -> TrialUpdate:
        return [u for u in self.updates if u.key == key][-1]


def digits_spec(parameters: dict[str, Any], **kw: Any) -> SweepSpec:
    """The validated :func:`tests.specs.digits_body` sweep."""
    return SweepSpec.model_validate(digits_body(parameters, **kw))


def sweep(spec: SweepSpec, sink: RecordingSink, tmp: Path) -> tuple[str, str]:
    """Run ``spec`` to its end under a new sweep uid; the uid and the final status."""
    sweep_uid = uuid.uuid4().hex[:8]
    return sweep_uid, run_sweep(spec, sink, sweep_uid=sweep_uid, storage_path=str(tmp))


def alive_trial_worker_pids(address: str) -> list[int]:
    """Process ids of the live Tune trial actors (the workers running ``run_trial``)."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True)
    return [
        a.pid
        for a in actors
        if "run_trial" in (a.class_name or "") or "ImplicitFunc" in (a.class_name or "")
    ]
