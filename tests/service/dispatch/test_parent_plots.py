"""A sweep's pictures and trial table reach its MLflow parent run: while it runs, at most every
period, and once more before the run is closed."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import matplotlib.image
from mlflow.tracking import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.dispatch.tracking import TrackingSender
from service.job.sink import DatabaseSink
from service.store import tracking as journal
from service.store.db import session_scope
from tests.service.dispatch.test_tracking import A, epoch, finished_sweep, new_sweep, runs_of, trial
from tests.specs import digits_body
from workers.events import TrialUpdate
from workers.spec import SweepSpec
from workers.tracking import CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT, MlflowRuns

PNG = b"\x89PNG\r\n\x1a\n"


def parent_file(uri: str, run_id: str, path: str, tmp_path: Path) -> bytes:
    local = MlflowClient(uri).download_artifacts(run_id, path, str(tmp_path / str(time.time())))
    return Path(local).read_bytes()


def assert_png(content: bytes) -> None:
    assert content.startswith(PNG)
    height, width = matplotlib.image.imread(io.BytesIO(content), format="png").shape[:2]
    assert width > 300 and height > 200


def test_a_finished_sweeps_parent_run_has_its_pictures_and_trial_table(
    factory, mlflow_server, tmp_path
) -> None:
    sink = finished_sweep(factory)  # trial 1 completed, trial 2 diverged

    TrackingSender(factory, MlflowRuns(mlflow_server.uri)).deliver(sink.sweep_id)

    (parent,), _ = runs_of(mlflow_server.uri, factory, sink.sweep_id)
    run_id = parent.info.run_id
    names = {f.path for f in MlflowClient(mlflow_server.uri).list_artifacts(run_id)}
    assert {CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT} <= names
    assert parent.info.status == "FINISHED"
    for png in (CURVES_ARTIFACT, PARAMETERS_ARTIFACT):
        assert_png(parent_file(mlflow_server.uri, run_id, png, tmp_path))
    summary = parent_file(mlflow_server.uri, run_id, SUMMARY_ARTIFACT, tmp_path).decode()
    assert "| 1 | digits-sweep #1 lr=0.01 | completed | 0.01 | 0.8000 | 0.8000 | 3 |" in summary
    assert "| - | digits-sweep #2 lr=10.0 | diverged | 10 |  | 0.6000 | 1 |" in summary


def test_a_running_sweep_is_drawn_again_on_news_at_most_once_a_period(
    factory, mlflow_server, tmp_path
) -> None:
    sender = TrackingSender(factory, MlflowRuns(mlflow_server.uri), plots_every_s=2.0)
    sink = new_sweep(factory)
    trial(sink, A, "running", 0.01)
    sender.deliver(sink.sweep_id)  # no epoch yet: nothing to draw
    with session_scope(factory) as session:
        run_id = store.get_sweep(session, sink.sweep_id).parent_run_id
    assert run_id is not None
    client = MlflowClient(mlflow_server.uri)
    assert SUMMARY_ARTIFACT not in {f.path for f in client.list_artifacts(run_id)}

    def epochs_drawn() -> str:
        summary = parent_file(mlflow_server.uri, run_id, SUMMARY_ARTIFACT, tmp_path).decode()
        row = next(line for line in summary.splitlines() if "#1 lr=0.01" in line)
        return row.rsplit("|", 2)[-2].strip()

    epoch(sink, A, 1)
    sender.deliver(sink.sweep_id)
    assert epochs_drawn() == "1"
    epoch(sink, A, 2)
    sender.deliver(sink.sweep_id)  # news, but too soon: held back
    assert epochs_drawn() == "1" and not sender.plots.due(sink.sweep_id)
    time.sleep(2.1)
    assert sender.plots.due(sink.sweep_id)
    sender.deliver(sink.sweep_id)  # nothing else changed: drawn all the same
    assert epochs_drawn() == "2" and not sender.plots.due(sink.sweep_id)
    trial(sink, A, "completed", 0.01)
    sink.sweep_ended("completed", "", A)
    sender.deliver(sink.sweep_id)  # the end is always drawn, however soon
    assert (
        "| 1 | digits-sweep #1 lr=0.01 | completed |"
        in parent_file(mlflow_server.uri, run_id, SUMMARY_ARTIFACT, tmp_path).decode()
    )


def big_sweep(factory: sessionmaker[Session], trials: int, epochs: int) -> DatabaseSink:
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.3}}
    spec = SweepSpec.model_validate(
        digits_body(params | {"seed": [0, 1, 2]}, max_trials=trials, method="random")
    )
    with session_scope(factory) as session:
        sweep, _ = store.create_sweep(session, spec)
        session.flush()
        sink = DatabaseSink(factory, sweep.id)
    with sink.batch():
        for n in range(trials):
            number, lr = n + 1, 0.001 * 1.05**n
            p = {"optim.lr": lr, "seed": n % 3}
            sink.trial_updated(TrialUpdate(number, "running", p, f"big #{number}", p, "", 1))
            for e in range(1, epochs + 1):
                acc = 0.9 * (1 - math.exp(-e / 5)) - abs(math.log(lr / 0.03)) / 20
                sink.epoch_reported(number, e, {"val_accuracy": acc, "val_loss": 1 / e})
    return sink


def test_a_120_trial_sweep_is_read_and_drawn_from_the_database(factory, mlflow_server) -> None:
    sink = big_sweep(factory, trials=120, epochs=30)
    sender = TrackingSender(factory, MlflowRuns(mlflow_server.uri))
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        trials = journal.trials_with_runs(session, sink.sweep_id)
    sender.plots._draw(sweep, trials)  # matplotlib's imports and font cache, once per process
    started = time.perf_counter()
    files = sender.plots._draw(sweep, trials)
    took = time.perf_counter() - started
    print(f"reading and drawing 120 trials x 30 epochs: {took:.3f} s")
    # How long it takes (0.4-0.7 s here) is a benchmark's question, never a test's.
    assert set(files) == {CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT}
    assert files[CURVES_ARTIFACT].startswith(PNG) and files[PARAMETERS_ARTIFACT].startswith(PNG)
    assert "big #120" in files[SUMMARY_ARTIFACT].decode()
