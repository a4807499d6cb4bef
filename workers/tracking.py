"""MLflow tracking of sweeps: the only module of the project that imports mlflow.

A sweep is a parent run; each trial is a child run nested under it (tag ``mlflow.parentRunId``)
with the trial's whole configuration as parameters and every epoch's metrics at
``step=epoch``. Run status mirrors the outcome (:data:`RUN_STATUS`, the outcome itself in the tag
``sweeps.outcome``). :class:`MlflowRuns` makes the requests, one attempt each: the service's
tracking sender decides what to send, and retries.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from workers.errors import TrackingError, TrackingRejectedError
from workers.events import SAMPLES_ARTIFACT as SAMPLES_ARTIFACT  # the path of a trial's picture

RUN_STATUS: dict[str, str] = {
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
}
"""Final trial or sweep status -> MLflow run status."""
TRACKING_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""MLflow's client reads these only from the environment: one attempt of at most 5 s per
request (the sender retries with its own backoff), and no run URL printed (nor fetched) at
every close."""
SWEEP_UID, TRIAL_KEY, ROLE, OUTCOME = (
    "sweeps.sweep_uid",
    "sweeps.trial_key",
    "sweeps.role",
    "sweeps.outcome",
)
OBJECTIVE = "objective"
"""Each trial run logs the sweep's metric a second time, as ``objective/<metric>``: MLflow's
chart view lists a prefixed metric's section above its "Model metrics" (sorted by name), so
the metric the sweep optimizes is the first chart a user sees."""
PACK_TAG = "sweeps.pack"
PARENT_TAG = "mlflow.parentRunId"
SPEC_ARTIFACT = "sweep_spec.json"
CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT = (
    "curves.png",
    "parameters.png",
    "summary.md",
)
"""Artifacts of a sweep's parent run: every trial's curves, each varied setting against the
metric, and the ranked trial table."""
# SAMPLES_ARTIFACT (imported above), of each trial run: the same training images before and after
# its augmentation. Named in workers.events: the sweep job, which never imports mlflow, stores it.
_METRICS_PER_BATCH, _PARAMS_PER_BATCH, _TAGS_PER_BATCH = 800, 100, 100
"""At most this many per ``log_batch`` request (MLflow: 1000, 100, 100, and 1000 in all)."""


class Point(NamedTuple):
    """One metric value of a run: ``key`` at ``step``, logged at ``timestamp_ms``.

    A point sent again with the same timestamp is stored once (MLflow drops exact repeats)."""

    key: str
    value: float
    timestamp_ms: int
    step: int


def parent_tags(sweep_uid: str, method: str) -> dict[str, str]:
    """The tags a sweep's parent run is created with."""
    return {SWEEP_UID: sweep_uid, ROLE: "sweep", "sweeps.method": method}


def trial_tags(
    sweep_uid: str, trial_key: str, parent_run_id: str, pack: str = ""
) -> dict[str, str]:
    """The tags a trial's run is created with: nested under the sweep's parent run, and
    naming the pack it trained in (``sweeps.pack``, when packed)."""
    tags = {PARENT_TAG: parent_run_id, SWEEP_UID: sweep_uid, TRIAL_KEY: trial_key, ROLE: "trial"}
    return tags | ({PACK_TAG: pack} if pack else {})


def outcome_tags(status: str, message: str) -> dict[str, str]:
    """Tags of a run that ended with ``status`` (and why, when there is a message)."""
    return {OUTCOME: status, **({"sweeps.message": message[:5000]} if message else {})}


def best_tags(trial_key: str, params: Mapping[str, Any], run_id: str | None) -> dict[str, str]:
    """Tags of a sweep's parent run naming its best trial."""
    tags = {"sweeps.best_trial_key": trial_key, "sweeps.best_params": json.dumps(params)}
    tags |= {f"best.{k}": str(v) for k, v in params.items()}
    return tags | ({"sweeps.best_run_id": run_id} if run_id else {})


class MlflowRuns:
    """The requests the tracking sender makes to one MLflow server (thread safe).

    Every method makes one attempt: it raises :class:`~workers.errors.TrackingRejectedError`
    when MLflow refuses the request for good (a 4xx), and :class:`~workers.errors.
    TrackingError` when it could not answer (down, timed out, 5xx), which is worth retrying.
    """

    def __init__(self, tracking_uri: str) -> None:
        os.environ.update(TRACKING_ENV)
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def ping(self) -> None:
        """One cheap request: raises :class:`~workers.errors.TrackingError` unless MLflow
        answers."""
        self._call("answer", lambda: self.client.search_experiments(max_results=1))

    def experiment(self, name: str) -> str:
        """The id of the experiment called ``name``, made when missing."""

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return str(found.experiment_id)
            return str(self.client.create_experiment(name))

        return self._call(f"get or create experiment {name!r}", get_or_create)

    def find_run(self, experiment_id: str, tags: Mapping[str, str]) -> str | None:
        """The id of the run whose tags have these values, if any (deleted runs included)."""
        query = " and ".join(f"tags.`{k}` = '{v.replace(chr(39), '')}'" for k, v in tags.items())
        runs = self._call(
            "look for a run",
            lambda: self.client.search_runs([experiment_id], query, ViewType.ALL, max_results=1),
        )
        return str(runs[0].info.run_id) if runs else None

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str]) -> str:
        """A new run of the experiment; its id."""
        run = self._call(
            f"create run {name!r}",
            lambda: self.client.create_run(experiment_id, tags=dict(tags), run_name=name),
        )
        return str(run.info.run_id)

    def log(
        self,
        run_id: str,
        points: Sequence[Point] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Metrics, parameters and tags of a run, in as few ``log_batch`` requests as MLflow's
        limits allow (a repeated call logs nothing twice)."""
        metrics = [Metric(p.key, float(p.value), p.timestamp_ms, p.step) for p in points]
        param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        m, p, t = _METRICS_PER_BATCH, _PARAMS_PER_BATCH, _TAGS_PER_BATCH
        requests = max(-(-len(metrics) // m), -(-len(param_list) // p), -(-len(tag_list) // t))
        for i in range(requests):
            batch = {
                "metrics": metrics[i * m : (i + 1) * m],
                "params": param_list[i * p : (i + 1) * p],
                "tags": tag_list[i * t : (i + 1) * t],
            }
            self._call("log a batch", lambda b=batch: self.client.log_batch(run_id, **b))  # type: ignore[misc]

    def log_text(self, run_id: str, text: str, path: str) -> None:
        """A text artifact of the run (replaced when sent again)."""
        self._call(f"upload {path}", lambda: self.client.log_text(run_id, text, path))

    def log_file(self, run_id: str, content: bytes, path: str) -> None:
        """A binary artifact of the run (a PNG, say) at ``path`` (replaced when sent again)."""

        def upload() -> None:
            with tempfile.TemporaryDirectory(prefix="sweeps-artifact-") as tmp:
                local = Path(tmp, Path(path).name)
                local.write_bytes(content)
                parent = str(Path(path).parent)
                self.client.log_artifact(run_id, str(local), None if parent == "." else parent)

        self._call(f"upload {path}", upload)

    def close(self, run_id: str, status: str) -> None:
        """End the run with an MLflow status (``FINISHED``, ``FAILED``, ``KILLED``)."""
        self._call("close a run", lambda: self.client.set_terminated(run_id, status))

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except MlflowException as err:
            code = _http_status(err)
            if code is not None and 400 <= code < 500 and code not in (408, 429):
                raise TrackingRejectedError(f"MLflow refused to {what}: {err}") from err
            raise TrackingError(f"MLflow at {self.uri} failed to {what}: {err}") from err
        except Exception as err:  # connection refused, timeouts, broken responses
            raise TrackingError(f"MLflow at {self.uri} failed to {what}: {err}") from err


def _http_status(err: MlflowException) -> int | None:
    """The HTTP status MLflow answered with, when it answered."""
    try:
        return int(err.get_http_status_code())
    except (TypeError, ValueError, AttributeError):
        return None
