"""MLflow tracking of sweeps: the only module of the project that imports mlflow.

A sweep is a parent run; each trial is a child run nested under it (tag ``mlflow.parentRunId``)
with the trial's whole configuration as parameters and every epoch's metrics at ``step=epoch``.
Run status mirrors the outcome (:data:`RUN_STATUS`, the outcome itself in the tag
``sweeps.outcome``); no run is left RUNNING (:func:`close_sweep_runs` closes what a vanished
driver left open). Tracking is best effort: a failed call is retried, then logged and dropped.
Run the driver with :data:`TRACKING_ENV` so MLflow's own HTTP retries stay short.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient

from workers.spec import SweepSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_STATUS: dict[str, str] = {
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
}
"""Final trial or sweep status -> MLflow run status."""
TRACKING_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""Environment of the driver process: MLflow's retries last seconds, not minutes, and closing a
run does not fetch it again only to print its URL (one request per trial)."""
SWEEP_UID, TRIAL_KEY, ROLE, OUTCOME = (
    "sweeps.sweep_uid",
    "sweeps.trial_key",
    "sweeps.role",
    ("sweeps.outcome"),
)
PARENT_TAG = "mlflow.parentRunId"
SPEC_ARTIFACT = "sweep_spec.json"
_ATTEMPTS = 3
_METRICS_PER_BATCH, _PARAMS_PER_BATCH, _TAGS_PER_BATCH = 800, 100, 100
"""At most this many per ``log_batch`` request (MLflow: 1000, 100, 100, and 1000 in all)."""


def _retry(what: str, fn: Callable[[], T]) -> T | None:
    """Call ``fn`` up to three times; on the last failure warn and return None."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return fn()
        except Exception as err:  # any tracking error; the sweep must go on
            if attempt == _ATTEMPTS:
                log.warning("MLflow: %s failed, skipped: %s", what, err)
                return None
            time.sleep(0.5 * attempt)
    return None


def _done(what: str, fn: Callable[[], object]) -> bool:
    """Like :func:`_retry` for calls that return nothing: whether the call went through."""

    def call() -> bool:
        fn()
        return True

    return _retry(what, call) is True


def _now_ms() -> int:
    return int(time.time() * 1000)


def _tags_equal(tags: Mapping[str, str]) -> str:
    """An MLflow filter string matching runs whose ``tags`` have these values."""
    return " and ".join(f"tags.`{k}` = '{v.replace(chr(39), '')}'" for k, v in tags.items())


class SweepTracker:
    """The MLflow runs of one sweep; not thread safe: the driver calls it from one thread at a time.

    While Tune runs, that is the sweep's outbox thread (see :mod:`workers.driver.progress`).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_uid: str) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_name = experiment_name
        self.sweep_uid = sweep_uid
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._unclosed: dict[str, str] = {}  # run id -> MLflow status still to record
        self._fresh = False  # the parent run is new, so no trial run of the sweep exists yet
        self._metric: str | None = None  # the sweep's metric; every epoch logs it
        self._logged: dict[str, int] = {}  # reopened run id -> last epoch it already holds
        self._params_due: dict[str, list[Param]] = {}  # run id -> configuration not yet sent
        self._strays = False  # a create request failed: it may have made a run all the same
        self._running: set[str] = set()  # trial runs opened and not closed yet

    def start_sweep(
        self, spec: SweepSpec, parent_run_id: str | None = None, *, resumed: bool = True
    ) -> str | None:
        """Open (or, on resume, find) the sweep's parent run; returns its id, None if offline.

        ``resumed=False`` says no driver ran the sweep before, so it has no parent run to find.
        """
        self._metric = spec.metric.name
        self.experiment_id = _retry("experiment", self._experiment)
        if self.experiment_id is None:
            return None
        found = parent_run_id
        if found is None and resumed:
            found = _retry("find sweep run", self._find_parent)
        if found is None:
            tags = {SWEEP_UID: self.sweep_uid, ROLE: "sweep", "sweeps.method": spec.method}
            self.parent_run_id = _retry(
                "create sweep run", lambda: self._create_run(tags, spec.name)
            )
            self._fresh = self.parent_run_id is not None
            if self.parent_run_id is not None:
                self._describe_parent(self.parent_run_id, spec)
        else:  # a resumed sweep (or one the service opened): the run may have been closed
            self.parent_run_id = found
            _done("reopen sweep run", lambda: self.client.update_run(found, "RUNNING"))
        return self.parent_run_id

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        return found.experiment_id if found else self.client.create_experiment(self.experiment_name)

    def _find_parent(self) -> str | None:
        runs = self._search(_tags_equal({SWEEP_UID: self.sweep_uid, ROLE: "sweep"}))
        return runs[0].info.run_id if runs else None

    def _describe_parent(self, run_id: str, spec: SweepSpec) -> None:
        """The sweep's specification (an artifact) and headline parameters on its run."""
        text = spec.model_dump_json(indent=2)
        _done(
            "log the sweep's specification",
            lambda: self.client.log_text(run_id, text, SPEC_ARTIFACT),
        )
        self._send(
            "log the sweep's parameters",
            run_id,
            params=[Param(k, str(v)) for k, v in _headline(spec).items()],
        )

    def start_trial(
        self,
        trial_key: str,
        run_name: str,
        config: Mapping[str, Any],
        *,
        defer_params: bool = False,
    ) -> str | None:
        """Open the trial's child run (or find it after a resume) and log its configuration.

        With ``defer_params`` the configuration goes out with the run's next :meth:`log_trial`
        request, or with :meth:`send_due_params`, whichever comes first.
        """
        if self.parent_run_id is None:
            return None
        run_id = None
        if not self._fresh:  # a resumed sweep: the trial may have a run from the last driver
            run_id = _retry("find trial run", lambda: self._find_trial(trial_key))
        if run_id is None:
            run_id = _retry("create trial run", lambda: self._create_trial(trial_key, run_name))
        else:  # a resumed driver: the run may hold epochs a checkpoint will bring again
            _done("reopen trial run", lambda: self.client.update_run(run_id, "RUNNING"))
            self._logged[run_id] = _retry("read run history", lambda: self._last_step(run_id)) or 0
        if run_id is not None:
            self._unclosed.pop(run_id, None)
            self._running.add(run_id)
            self._params_due[run_id] = [Param(k, str(v)) for k, v in config.items()]
            if not defer_params:
                self.send_due_params()
        return run_id

    def send_due_params(self) -> None:
        """Log the configuration of every run that opened and has not sent it yet."""
        for run_id in list(self._params_due):
            self._send("log params", run_id, params=self._params_due.pop(run_id))

    def _last_step(self, run_id: str) -> int:
        if self._metric is None:
            return 0
        history = self.client.get_metric_history(run_id, self._metric)
        return max((m.step for m in history), default=0)

    def _find_trial(self, trial_key: str) -> str | None:
        runs = self._search(_tags_equal({SWEEP_UID: self.sweep_uid, TRIAL_KEY: trial_key}))
        return runs[0].info.run_id if runs else None

    def _create_trial(self, trial_key: str, run_name: str) -> str:
        assert self.experiment_id is not None and self.parent_run_id is not None
        tags = {PARENT_TAG: self.parent_run_id, SWEEP_UID: self.sweep_uid, TRIAL_KEY: trial_key}
        tags[ROLE] = "trial"
        return self._create_run(tags, run_name)

    def _create_run(self, tags: dict[str, str], run_name: str) -> str:
        assert self.experiment_id is not None
        try:
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name)
            return str(run.info.run_id)
        except Exception:
            self._strays = True  # the request may have made the run before it failed
            raise

    def log_trial(
        self,
        run_id: str | None,
        epochs: Sequence[tuple[int, Mapping[str, float]]] = (),
        end: tuple[str, str] | None = None,
    ) -> None:
        """Log epochs' metrics (``step=epoch``) and, with ``end``, close the trial's run.

        One ``log_batch`` request carries every epoch given (up to 800 metrics), the outcome
        tags and a deferred configuration (:meth:`start_trial`), so a driver that writes behind
        Tune sends one request for several epochs. Epochs a reopened run already holds are
        skipped.

        Args:
            run_id: the trial's child run; nothing is logged when None (MLflow was offline).
            epochs: ``(epoch, metrics)`` pairs, in order.
            end: the trial's final status and message: tag ``sweeps.outcome`` and close the
                run with the matching MLflow status (:data:`RUN_STATUS`).
        """
        if run_id is None:
            return
        done = self._logged.get(run_id, 0)
        ts = _now_ms()
        metrics = [
            Metric(k, float(v), ts, epoch)
            for epoch, values in epochs
            if epoch > done
            for k, v in values.items()
        ]
        tags: list[RunTag] = []
        if end is not None:
            status, message = end
            self._unclosed[run_id] = RUN_STATUS[status]
            tags.append(RunTag(OUTCOME, status))
            if message:
                tags.append(RunTag("sweeps.message", message[:5000]))
        what = f"log {len(epochs)} epochs" if epochs else "tag outcome"
        self._send(what, run_id, metrics, self._params_due.pop(run_id, []), tags)
        if end is not None and _done(
            "close trial run", lambda: self.client.set_terminated(run_id, RUN_STATUS[end[0]])
        ):
            self._unclosed.pop(run_id, None)
            self._running.discard(run_id)

    def _send(
        self,
        what: str,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        """``log_batch`` in as few requests as MLflow's limits per request allow."""
        m, p, t = _METRICS_PER_BATCH, _PARAMS_PER_BATCH, _TAGS_PER_BATCH
        requests = max(-(-len(metrics) // m), -(-len(params) // p), -(-len(tags) // t))
        for i in range(requests):
            batch = {
                "metrics": list(metrics[i * m : (i + 1) * m]),
                "params": list(params[i * p : (i + 1) * p]),
                "tags": list(tags[i * t : (i + 1) * t]),
            }
            _done(what, lambda b=batch: self.client.log_batch(run_id, **b))  # type: ignore[misc]

    def end_sweep(self, status: str, best: Mapping[str, Any] | None, metric: str) -> None:
        """Record the best trial on the parent run and close every run of the sweep.

        Args:
            status: the sweep's final status (completed, failed, cancelled).
            best: ``{"trial_key", "run_id", "value", "params"}`` of the best trial, or None.
            metric: the sweep's metric name (the parent logs ``best_<metric>``).
        """
        self.send_due_params()
        for run_id, run_status in list(self._unclosed.items()):
            if _done("close trial run", lambda r=run_id, s=run_status: self._terminate(r, s)):  # type: ignore[misc]
                self._unclosed.pop(run_id)
                self._running.discard(run_id)
        if self.parent_run_id is None:
            return
        parent = self.parent_run_id
        tags, metrics = [RunTag(OUTCOME, status)], []
        if best is not None:
            tags += [
                RunTag("sweeps.best_trial_key", str(best["trial_key"])),
                RunTag("sweeps.best_params", json.dumps(best["params"])),
            ]
            tags += [RunTag(f"best.{k}", str(v)) for k, v in best["params"].items()]
            if best.get("run_id"):
                tags.append(RunTag("sweeps.best_run_id", str(best["run_id"])))
            metrics = [Metric(f"best_{metric}", float(best["value"]), _now_ms(), 0)]
        self._send("log the sweep's outcome and best trial", parent, metrics, tags=tags)
        closed = _done("close sweep run", lambda: self._terminate(parent, RUN_STATUS[status]))
        if closed and self._fresh and not self._running and not self._strays:
            return  # every run of the sweep is this tracker's own, and each one was closed
        # Whatever is still open (its end never reached MLflow, a run of an earlier driver, one
        # a failed create request made anyway) ends with the sweep.
        experiments = [self.experiment_id] if self.experiment_id else None
        _retry(
            "close leftover runs",
            lambda: close_sweep_runs(self.client, self.sweep_uid, RUN_STATUS[status], experiments),
        )

    def _terminate(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def _search(self, filter_string: str) -> list[Any]:
        assert self.experiment_id is not None
        return list(
            self.client.search_runs(
                [self.experiment_id], filter_string, ViewType.ACTIVE_ONLY, max_results=10
            )
        )


def _headline(spec: SweepSpec) -> dict[str, Any]:
    return {
        "sweep.method": spec.method,
        "sweep.metric": spec.metric.name,
        "sweep.goal": spec.metric.goal,
        "sweep.num_trials": spec.num_trials,
        "sweep.epochs": spec.epochs,
        "sweep.dataset": spec.dataset,
        "sweep.early_stopping": spec.early_stopping.type,
        "sweep.max_concurrent": spec.max_concurrent,
        "sweep.seed": spec.seed,
    }


def close_sweep_runs(
    client_or_uri: MlflowClient | str,
    sweep_uid: str,
    status: str = "KILLED",
    experiment_ids: list[str] | None = None,
) -> int:
    """Close every RUNNING run (parent and children) of a sweep with ``status``.

    For the service: reconciliation after a driver vanished, or the fallback of a cancel whose
    driver did not answer. Searches all experiments unless ``experiment_ids`` is given.

    Returns:
        How many runs were closed.
    """
    client = (
        MlflowClient(tracking_uri=client_or_uri)
        if isinstance(client_or_uri, str)
        else client_or_uri
    )
    ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    query = _tags_equal({SWEEP_UID: sweep_uid}) + " and attributes.status = 'RUNNING'"
    runs = client.search_runs(ids, query, ViewType.ALL, max_results=10000)
    for run in runs:
        client.set_tag(
            run.info.run_id,
            OUTCOME,
            {"KILLED": "cancelled", "FAILED": "failed"}.get(status, status.lower()),
        )
        client.set_terminated(run.info.run_id, status)
    return len(runs)
