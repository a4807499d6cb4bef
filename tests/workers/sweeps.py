"""Helpers of the worker tests: a recording sink (the tests' observer), sweep specs, and
running a sweep into the tests' MLflow experiment."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.specs import digits_body
from workers.driver.sweep import run_sweep
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
    started: list[tuple[str | None, str]] = field(default_factory=list)
    ended: tuple[str, str, str | None] | None = None
    cancel_at: float | None = None

    def sweep_started(self, mlflow_run_id: str | None, experiment_path: str) -> None:
        self.started.append((mlflow_run_id, experiment_path))

    def trial_updated(self, update: TrialUpdate) -> None:
        self.updates.append(update)

    def epoch_reported(self, trial_key: str, epoch: int, metrics: dict[str, float]) -> None:
        time.sleep(self.epoch_write_s)
        self.epochs.setdefault(trial_key, {})[epoch] = metrics
        if self.on_epoch is not None:
            self.on_epoch(self, trial_key, epoch, metrics)
        n = sum(len(e) for e in self.epochs.values())
        if self.cancel_after_epochs is not None and n >= self.cancel_after_epochs:
            self.cancel_at = self.cancel_at or time.monotonic()

    def sweep_ended(self, status: str, message: str, best_trial_key: str | None) -> None:
        self.ended = (status, message, best_trial_key)

    def batch(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def cancel_requested(self) -> bool:
        return self.cancel_at is not None

    def final_status(self) -> dict[str, str]:
        """Each trial's last reported status."""
        return {u.key: u.status for u in self.updates}

    def last_update(self, key: str) -> TrialUpdate:
        return [u for u in self.updates if u.key == key][-1]


def digits_spec(parameters: dict[str, Any], **kw: Any) -> SweepSpec:
    """The validated :func:`tests.specs.digits_body` sweep."""
    return SweepSpec.model_validate(digits_body(parameters, **kw))


def sweep(spec: SweepSpec, sink: RecordingSink, mlflow_uri: str, tmp: Path) -> tuple[str, str]:
    """Run ``spec`` to its end under a new sweep id; the id and the final status."""
    sweep_uid = uuid.uuid4().hex[:8]
    status = run_sweep(
        spec,
        sink,
        sweep_uid=sweep_uid,
        tracking_uri=mlflow_uri,
        mlflow_experiment="worker-tests",
        storage_path=str(tmp),
    )
    return sweep_uid, status


def runs_of(uri: str, sweep_uid: str):
    """The MLflow client, the sweep's parent runs and its trial runs."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("worker-tests")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`sweeps.sweep_uid` = '{sweep_uid}'", ViewType.ALL
    )
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    return client, parents, children
