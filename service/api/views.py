"""Turning stored rows into response models, with the API's and MLflow's links.

Responses are built from the rows alone: a stored spec is never validated again here. The
MLflow comparison link is the experiment's runs view narrowed to the sweep's trials, sorted by
its metric and in chart view: what MLflow's UI honours, and why, is in ARCHITECTURE.md
("The MLflow comparison link").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy.orm import Session

from service import store
from service.api.schemas import (
    BestTrial,
    EpochPublic,
    Links,
    SweepDetail,
    SweepPublic,
    TrialDetail,
    TrialPublic,
)
from service.config import Settings
from service.store import tracking
from service.store.models import Sweep, Trial
from workers.events import TRIAL_STATUSES, finite_metrics
from workers.tracking import (
    CURVES_ARTIFACT,
    PARAMETERS_ARTIFACT,
    ROLE,
    SAMPLES_ARTIFACT,
    SPEC_ARTIFACT,
    SUMMARY_ARTIFACT,
    SWEEP_UID,
)

SWEEP_ARTIFACTS = (CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT, SPEC_ARTIFACT)
"""What the service uploads to a sweep's parent run."""
TRIAL_ARTIFACTS = (SAMPLES_ARTIFACT,)
"""What the service uploads to a trial's run."""
MlflowLinks = dict[str, Any]
"""Keyword arguments of :class:`Links` that point into MLflow."""


class Views:
    """Builds responses; holds the link bases from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.api = settings.api_url
        self.mlflow = settings.mlflow_link_base

    def experiment_url(self, sweep: Sweep) -> str | None:
        """MLflow's comparison of the sweep's trials: one row each, best first, and their
        curves drawn together (chart view); the same link while the sweep runs and after."""
        if sweep.mlflow_experiment_id is None:
            return None
        query = {
            "workflowType": "machine_learning",  # MLflow 3 opens in GenAI mode otherwise
            "compareRunsMode": "CHART",
            # Only the trials: the parent run carries the sweep's single best value.
            "searchFilter": f"tags.`{SWEEP_UID}` = '{sweep.uid}' and tags.`{ROLE}` = 'trial'",
            # Any order but by date shows child runs as rows of their own, not folded under
            # their parent; the chart view draws the first 10 rows: the best 10 trials.
            "orderByKey": f"metrics.`{sweep.metric_name}`",
            "orderByAsc": str(sweep.metric_goal == "minimize").lower(),
        }
        runs = f"{self.mlflow}/#/experiments/{sweep.mlflow_experiment_id}/runs"
        return f"{runs}?{urlencode(query, quote_via=quote)}"

    def run_url(self, sweep: Sweep, run_id: str | None) -> str | None:
        """The MLflow page of one run of the sweep."""
        if sweep.mlflow_experiment_id is None or run_id is None:
            return None
        return f"{self.mlflow}/#/experiments/{sweep.mlflow_experiment_id}/runs/{run_id}"

    def mlflow_links(self, sweep: Sweep, run_id: str | None, names: tuple[str, ...]) -> MlflowLinks:
        """The MLflow part of a sweep's or trial's links: the comparison, the run, its
        artifacts page and a raw download of each of ``names``."""
        run = self.run_url(sweep, run_id)
        if run is None:
            return {"mlflow_experiment": self.experiment_url(sweep)}
        mode = "?workflowType=machine_learning"  # MLflow 3 opens a run in GenAI mode otherwise
        return {
            "mlflow_experiment": self.experiment_url(sweep),
            "mlflow_run": f"{run}{mode}",
            "mlflow_artifacts": f"{run}/artifacts{mode}",
            "artifacts": {
                name: f"{self.mlflow}/get-artifact?"
                + urlencode({"path": name, "run_uuid": run_id}, quote_via=quote)
                for name in names
            },
        }

    def sweep_links(self, sweep: Sweep) -> Links:
        """Links of a sweep: itself, its trials, its MLflow comparison, parent run and
        artifacts."""
        base = f"{self.api}/sweeps/{sweep.id}"
        mlflow = self.mlflow_links(sweep, sweep.parent_run_id, SWEEP_ARTIFACTS)
        return Links(self=base, trials=f"{base}/trials", **mlflow)

    def sweep(self, sweep: Sweep) -> SweepPublic:
        """A sweep as listed."""
        return SweepPublic(
            id=sweep.id,
            uid=sweep.uid,
            name=sweep.name,
            status=sweep.status,
            message=sweep.message,
            planned_trials=sweep.planned_trials,
            ray_job_id=sweep.ray_job_id,
            resumes=sweep.resumes,
            created_at=sweep.created_at,
            started_at=sweep.started_at,
            ended_at=sweep.ended_at,
            links=self.sweep_links(sweep),
        )

    def sweep_detail(self, session: Session, sweep: Sweep) -> SweepDetail:
        """A sweep with trial counts per status, its best trial so far and its version.

        The version is read first: a change that lands while the rest is read makes the
        response newer than its version, so a client waiting on that version is woken at once
        rather than never told.
        """
        version = store.sweep_version(session, sweep.id)
        counts = dict.fromkeys(TRIAL_STATUSES, 0) | store.trial_counts(session, sweep)
        counts["total"] = sum(counts.values())
        name, goal = sweep.metric_name, sweep.metric_goal
        best = store.best_trial(session, sweep, name, goal)
        best_public = None
        if best is not None:
            best_public = BestTrial(
                number=best.trial.number,
                key=best.trial.key,
                status=best.trial.status,
                params=best.trial.params,
                metric=name,
                goal=goal,
                value=best.value,
                epoch=best.epoch,
                links=self.trial_links(sweep, best.trial),
            )
        return SweepDetail(
            **self.sweep(sweep).model_dump(),
            spec=sweep.spec,
            trial_counts=counts,
            best_trial=best_public,
            version=version,
            mlflow_pending=tracking.backlog(session, sweep),
            mlflow_error=sweep.mlflow_error,
        )

    def trial_links(self, sweep: Sweep, trial: Trial) -> Links:
        """Links of a trial: itself, its sweep's MLflow comparison, its run and artifacts."""
        mlflow = self.mlflow_links(sweep, trial.mlflow_run_id, TRIAL_ARTIFACTS)
        return Links(self=f"{self.api}/sweeps/{sweep.id}/trials/{trial.number}", **mlflow)

    def trial(self, sweep: Sweep, trial: Trial) -> TrialPublic:
        """A trial as listed, with its latest metrics."""
        last = trial.epochs[-1].metrics if trial.epochs else {}
        return TrialPublic(
            number=trial.number,
            key=trial.key,
            status=trial.status,
            params=trial.params,
            attempts=trial.attempts,
            message=trial.message,
            epochs_done=len(trial.epochs),
            last_metrics=finite_metrics(last),
            mlflow_run_id=trial.mlflow_run_id,
            pack=trial.pack,
            created_at=trial.created_at,
            ended_at=trial.ended_at,
            links=self.trial_links(sweep, trial),
        )

    def trial_detail(self, sweep: Sweep, trial: Trial) -> TrialDetail:
        """A trial with its per-epoch curve."""
        curve = [
            EpochPublic(epoch=e.epoch, metrics=finite_metrics(e.metrics)) for e in trial.epochs
        ]
        return TrialDetail(**self.trial(sweep, trial).model_dump(), curve=curve)
