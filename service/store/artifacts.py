"""Files of trial runs (a trial's augmentation picture) that the tracking sender has still to
upload: stored by the sweep job's sink (:func:`service.store.trials.record_artifact`), their
content dropped once MLflow has them. Every function works inside the caller's session.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.store.models import Trial, TrialArtifact


def unsent_artifacts(session: Session, trial_id: int) -> list[tuple[int, str, bytes]]:
    """(id, path, content) of the trial's files MLflow does not have yet, oldest first."""
    stmt = (
        select(TrialArtifact.id, TrialArtifact.path, TrialArtifact.content)
        .where(TrialArtifact.trial_id == trial_id, TrialArtifact.sent.is_(False))
        .order_by(TrialArtifact.id)
    )
    return [(row.id, row.path, row.content) for row in session.execute(stmt)]


def mark_sent(session: Session, artifact_id: int) -> None:
    """MLflow has the file (or refused it for good): its content goes, MLflow keeps it."""
    session.execute(
        update(TrialArtifact).where(TrialArtifact.id == artifact_id).values(sent=True, content=b"")
    )


def unsent_count(session: Session, sweep_id: int) -> int:
    """How many files of the sweep's trials MLflow does not have yet."""
    stmt = (
        select(func.count())
        .select_from(TrialArtifact)
        .join(Trial, Trial.id == TrialArtifact.trial_id)
        .where(Trial.sweep_id == sweep_id, TrialArtifact.sent.is_(False))
    )
    return int(session.scalar(stmt) or 0)
