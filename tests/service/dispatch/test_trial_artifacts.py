"""A trial's files (its augmentation picture) reach its MLflow run once, and wait out MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.cli.stack import free_port
from service.dispatch.tracking import TrackingSender
from service.store.db import session_scope
from service.store.models import TrialArtifact
from tests.service.dispatch.test_tracking import A, backlog, epoch, new_sweep, runs_of, trial
from workers.errors import TrackingError
from workers.events import SAMPLES_ARTIFACT
from workers.tracking import MlflowRuns

PICTURE = b"\x89PNG\r\n\x1a\n first" + bytes(range(256))


def download(uri: str, run_id: str, tmp_path: Path) -> bytes:
    local = MlflowClient(uri).download_artifacts(run_id, SAMPLES_ARTIFACT, str(tmp_path))
    return Path(local).read_bytes()


def stored(factory: sessionmaker[Session]) -> list[tuple[bool, int]]:
    """(sent, content size) of every stored file."""
    with session_scope(factory) as session:
        rows = session.execute(select(TrialArtifact.sent, TrialArtifact.content)).all()
    return [(sent, len(content)) for sent, content in rows]


def test_a_trials_picture_reaches_its_run_once_and_leaves_the_database(
    factory, mlflow_server, tmp_path
) -> None:
    sink = new_sweep(factory)
    trial(sink, A, "running", 0.01)
    with sink.batch():  # as the driver sends it: ahead of the epoch it came with
        sink.artifact_reported(A, SAMPLES_ARTIFACT, PICTURE)
        epoch(sink, A, 1)
    sink.artifact_reported(A, SAMPLES_ARTIFACT, b"a second rendering")  # a repeat keeps the first
    assert backlog(factory, sink.sweep_id) == 2 + 3 + 1  # parent, trial run with an epoch, picture

    sender = TrackingSender(factory, MlflowRuns(mlflow_server.uri))
    sender.deliver(sink.sweep_id)

    (_,), (child,) = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    names = [f.path for f in MlflowClient(mlflow_server.uri).list_artifacts(child.info.run_id)]
    assert names == [SAMPLES_ARTIFACT]
    assert download(mlflow_server.uri, child.info.run_id, tmp_path) == PICTURE
    assert stored(factory) == [(True, 0)]  # MLflow keeps it; the database no longer needs to
    assert backlog(factory, sink.sweep_id) == 0


def test_with_mlflow_down_the_picture_waits_and_arrives_before_the_run_closes(
    factory, mlflow_server, tmp_path
) -> None:
    sink = new_sweep(factory)
    trial(sink, A, "running", 0.01)
    sink.artifact_reported(A, SAMPLES_ARTIFACT, PICTURE)
    epoch(sink, A, 1)
    trial(sink, A, "completed", 0.01)
    sink.sweep_ended("completed", "1 trial: 1 completed", A)
    with pytest.raises(TrackingError):
        TrackingSender(factory, MlflowRuns(f"http://127.0.0.1:{free_port()}")).deliver(
            sink.sweep_id
        )
    assert stored(factory) == [(False, len(PICTURE))]

    TrackingSender(factory, MlflowRuns(mlflow_server.uri)).deliver(sink.sweep_id)

    (parent,), (child,) = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    assert parent.info.status == child.info.status == "FINISHED"
    assert download(mlflow_server.uri, child.info.run_id, tmp_path) == PICTURE
    assert backlog(factory, sink.sweep_id) == 0
