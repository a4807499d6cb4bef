"""Turning stored rows into response models, with the API's and MLflow's links.

Responses are built from the rows alone: a stored spec is never validated again here.
"""

from __future__ import annotations

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


class Views:
    """Builds responses; holds the link bases from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.api = settings.api_url
        self.mlflow = settings.mlflow_link_base

    def experiment_url(self, sweep: Sweep) -> str | None:
        """The MLflow experiment page where the sweep's runs can be compared."""
        if sweep.mlflow_experiment_id is None:
            return None
        return f"{self.mlflow}/#/experiments/{sweep.mlflow_experiment_id}"

    def run_url(self, sweep: Sweep, run_id: str | None) -> str | None:
        """The MLflow page of one run of the sweep."""
        experiment = self.experiment_url(sweep)
        if experiment is None or run_id is None:
            return None
        return f"{experiment}/runs/{run_id}"

    def sweep_links(self, sweep: Sweep) -> Links:
        """Links of a sweep: itself, its trials, its MLflow experiment and parent run."""
        base = f"{self.api}/sweeps/{sweep.id}"
        return Links(
            self=base,
            trials=f"{base}/trials",
            mlflow_experiment=self.experiment_url(sweep),
            mlflow_run=self.run_url(sweep, sweep.parent_run_id),
        )

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
        """Links of a trial: itself and its MLflow child run."""
        return Links(
            self=f"{self.api}/sweeps/{sweep.id}/trials/{trial.number}",
            mlflow_experiment=self.experiment_url(sweep),
            mlflow_run=self.run_url(sweep, trial.mlflow_run_id),
        )

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
