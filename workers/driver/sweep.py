"""The sweep driver: one Ray Tune experiment per sweep, every Tune trial a pack of trials.

:func:`run_sweep` is the entry point; it runs in the sweep's Ray job after ``ray.init()``. It
loads what the sink holds of the sweep's trials (a resumed sweep's), then runs Tune: the
searcher (:mod:`workers.driver.searcher`) hands Tune packs of the trials that
:mod:`workers.sampling` draws, :func:`workers.trial.pack.run_pack` trains them, and Tune's
callbacks (:mod:`workers.driver.callbacks`) feed each trial's
:class:`~workers.driver.progress.SweepProgress`, whose writes run behind Tune's controller and
are flushed before every snapshot of the experiment state. Why each setting is what it is
(snapshots, checkpoints kept, flushes): ARCHITECTURE.md, "Resume".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter

from workers.driver.callbacks import SNAPSHOT_PERIOD_S, CancelStopper, ProgressCallback
from workers.driver.live import LIVE, LiveSweep
from workers.driver.planning import PackPlanner
from workers.driver.probing import PackSizes
from workers.driver.progress import SweepProgress
from workers.driver.resources import TrialResources, trial_resources
from workers.driver.retention import apply_retention
from workers.driver.searcher import PackSearcher
from workers.driver.storage import is_local, local_path, storage_filesystem
from workers.errors import ClusterLostError, SinkUnavailableError
from workers.events import KeepCheckpoints, SweepSink, SweepStatus
from workers.spec import SweepSpec
from workers.trial.board import StoppingBoard, board_name
from workers.trial.pack import PICTURES_DIR, PackSetup, run_pack
from workers.trial.setup import TrialSetup

log = logging.getLogger(__name__)
TUNE_ENV = {
    "TUNE_GLOBAL_CHECKPOINT_S": str(SNAPSHOT_PERIOD_S),
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
"""Read by Tune when ``fit()`` builds its controller: snapshot every :data:`SNAPSHOT_PERIOD_S`
seconds, and write no per-trial result files (every result is in the sink and MLflow; the
TensorBoard logger would import torch into the driver)."""
# Tune's result grid looks for the result files the disabled loggers would have written, and
# warns for every trial that it found none: nothing is missing (the results are in the sink).
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
FORMAT_FILE = "sweeps-format.json"
FORMAT = 2
"""The experiment format this driver writes (:data:`FORMAT_FILE` in the experiment directory)
and the only one it resumes: every Tune trial a pack of numbered trials."""
EARLIER_DRIVER = (
    "this sweep was started by an earlier version of the driver, whose experiment state this "
    "version cannot resume; the trials that had ended keep their results, the others failed "
    "with the sweep. Submit the sweep again to run them"
)


def experiment_name(sweep_uid: str) -> str:
    """Name of the sweep's Tune experiment directory under the storage path."""
    return f"sweep-{sweep_uid}"


def run_sweep(
    spec: SweepSpec,
    sink: SweepSink,
    *,
    sweep_uid: str,
    storage_path: str,
    resume: bool = False,
    patience_s: float = 300.0,
    keep_checkpoints: KeepCheckpoints = "best",
    data_dir: str | None = None,
    data_download: bool = True,
) -> SweepStatus:
    """Run the sweep ``spec`` to its end and return its final status.

    Args:
        spec: the validated sweep.
        sink: receives every trial's progress (the service's database).
        sweep_uid: the sweep's globally unique id; names the Tune experiment.
        storage_path: absolute directory (or URI) of Tune's experiment state and checkpoints.
        resume: continue the sweep's Tune experiment when its state exists under
            ``storage_path`` (a restarted job); a fresh experiment otherwise.
        patience_s: how long reports the sink cannot store are retried.
        keep_checkpoints: what of the experiment stays on storage once the sweep is final
            (:data:`~workers.events.KeepCheckpoints`; by default the best trial's last
            checkpoint). An open sweep keeps everything, to be resumed.
        data_dir, data_download: where trials read data sets (None: the toolbox's default
            directory) and whether they may download a missing one there: the deployment's
            choice, never the sweep's.

    Returns:
        ``completed``, ``failed`` (no trial succeeded, or Tune itself failed) or ``cancelled``;
        ``sink.sweep_ended`` has been told the same, with the best trial, and its storage is
        reduced to ``keep_checkpoints`` (a failure to delete is logged, never raised).

    Raises:
        SinkUnavailableError: the sink stayed unavailable for ``patience_s`` seconds.
        ClusterLostError: Tune lost its Ray cluster.
        In both cases the sweep is left open, as the last snapshot on storage and the sink
        agree, to be resumed.
    """
    t_start = time.perf_counter()
    storage_path = local_path(storage_path)
    path = str(Path(storage_path, experiment_name(sweep_uid)))
    progress = SweepProgress(spec, sink, sweep_uid, patience_s=patience_s)
    fs = storage_filesystem(storage_path)
    restore = resume and tune.Tuner.can_restore(path, storage_filesystem=fs)
    if resume and not restore:
        log.warning("sweep %s: nothing on storage to resume from; starting over", sweep_uid)
    progress.retrying(lambda: sink.sweep_started(path))
    progress.retrying(lambda: progress.load(sink.trials(spec.metric.name)))
    if restore and _format(storage_path, path) != FORMAT:
        log.error("sweep %s: %s", sweep_uid, EARLIER_DRIVER)
        progress.close()
        return _finish(progress, EARLIER_DRIVER)  # its state stays as it was: keep "all"
    error, unavailable, lost, board = "", None, None, None
    t_tune = t_fit = time.perf_counter()
    try:
        with _environ(TUNE_ENV):
            cluster = ray.cluster_resources()
            resources = trial_resources(spec, cluster)
            setup = trial_setup(spec, resources, data_dir, data_download)
            board = _board(spec, sweep_uid, progress)
            sizes = PackSizes(_local_dir(storage_path), setup, resources)
            LIVE[sweep_uid] = LiveSweep(
                progress, PackPlanner(spec, sizes, cluster, ray.available_resources), board
            )
            fn = trainable(
                spec, setup, resources, sweep_uid, progress.ended(), _local_dir(storage_path)
            )
            if not restore:
                _write_format(storage_path, path)
            tuner = _tuner(spec, sweep_uid, storage_path, path, restore, fn)
            t_fit = time.perf_counter()
            tuner.fit()
    except Exception as err:  # Tune itself, or a write, failed: the sweep fails
        log.exception("sweep %s: Tune failed", sweep_uid)
        error, unavailable = f"{type(err).__name__}: {err}", _sink_unavailable(err)
        lost = _cluster_lost(err)
    finally:
        LIVE.pop(sweep_uid, None)
        if board is not None:
            ray.kill(board)
        t_done = time.perf_counter()
        failed_write = progress.close()  # every queued write is made, even on the way out
    unavailable = unavailable or _sink_unavailable(failed_write)
    if unavailable is not None:
        raise unavailable
    if lost is not None:
        raise ClusterLostError(f"Tune lost the Ray cluster: {lost}") from lost
    if failed_write is not None and not error:  # it failed after Tune's last look
        error = str(failed_write)  # names the write and its error
    t_close = time.perf_counter()
    status = _finish(progress, error)
    t_end = time.perf_counter()
    best = progress.best()
    # A trial's checkpoints are its pack's (which hold every trial's newest state).
    kept = apply_retention(
        storage_path, experiment_name(sweep_uid), best.pack if best else None, keep_checkpoints
    )
    if kept:
        log.info("sweep %s: the best trial's last checkpoint is kept at %s", sweep_uid, kept)
    log.info(
        "sweep %s %s: set-up %.2f s, Tuner %.2f s, fit %.2f s, flush %.2f s, wrap-up %.2f s, "
        "retention %.2f s",
        sweep_uid, status, t_tune - t_start, t_fit - t_tune, t_done - t_fit,
        t_close - t_done, t_end - t_close, time.perf_counter() - t_end,
    )  # fmt: skip
    return status


def _format(storage_path: str, experiment_path: str) -> int | None:
    """The format of the experiment at ``experiment_path`` (:data:`FORMAT_FILE`), or None."""
    fs, path = _filesystem(storage_path, experiment_path)
    try:
        with fs.open_input_stream(f"{path}/{FORMAT_FILE}") as f:
            found = json.loads(f.read()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, int) else None


def _write_format(storage_path: str, experiment_path: str) -> None:
    fs, path = _filesystem(storage_path, experiment_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{FORMAT_FILE}") as f:
        f.write(json.dumps({"format": FORMAT}).encode())


def _filesystem(storage_path: str, experiment_path: str) -> tuple[pafs.FileSystem, str]:
    if is_local(storage_path):
        return pafs.LocalFileSystem(), experiment_path
    fs, path = pafs.FileSystem.from_uri(experiment_path)
    return fs, path


CLUSTER_TROUBLE = (
    ray.exceptions.RaySystemError,
    ray.exceptions.RpcError,
    ray.exceptions.AuthenticationError,
    ray.exceptions.LocalRayletDiedError,
    ConnectionError,
)
"""Errors of Tune's own calls that say the cluster is gone, not that the sweep is wrong (trial
errors never reach ``fit()``: Tune retries and fails trials itself)."""


def _sink_unavailable(err: BaseException | None) -> SinkUnavailableError | None:
    """The :class:`SinkUnavailableError` behind ``err`` (its cause or context), if any."""
    found = _in_chain(err, (SinkUnavailableError,))
    return found if isinstance(found, SinkUnavailableError) else None


def _cluster_lost(err: BaseException | None) -> BaseException | None:
    """The error behind ``err`` that says the Ray cluster is gone, if any."""
    return _in_chain(err, CLUSTER_TROUBLE)


def _in_chain(
    err: BaseException | None, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kinds):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (Tune reads some settings only from there)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _finish(progress: SweepProgress, error: str) -> SweepStatus:
    """End the sweep: its open trials, then the sink. Writes are plain calls by now (closed)."""
    status: SweepStatus
    if progress.cancelled:
        status = "cancelled"
        progress.end_all("cancelled", "the sweep was cancelled")
    elif error:
        status = "failed"
        progress.end_all("failed", error)
    else:
        progress.end_all("failed", "Tune ended the sweep before this trial finished")
        ok = any(r.status != "failed" for r in progress.trials.values())
        status = "completed" if ok else "failed"
    best = progress.best()
    message = "; ".join(m for m in (error, progress.summary()) if m)
    number = best.number if best else None
    progress.retrying(lambda: progress.sink.sweep_ended(status, message, number))
    return status


def trial_setup(
    spec: SweepSpec,
    resources: TrialResources,
    data_dir: str | None = None,
    data_download: bool = True,
) -> TrialSetup:
    """What every trial of ``spec`` shares: the validated base configuration (data sets read
    from ``data_dir`` and downloaded there only when ``data_download``), metric, resources."""
    base = spec.base_config
    place = {"data_dir": data_dir, "download": data_download}
    return TrialSetup(
        base=base.model_copy(update={"data": base.data.model_copy(update=place)}),
        metric=spec.metric.name,
        mode=spec.metric.mode,
        cpus=resources.cpu,
        gpus=resources.gpu,
        variants=spec.variants,
    )


def trainable(
    spec: SweepSpec,
    setup: TrialSetup,
    resources: TrialResources,
    sweep_uid: str,
    ended: frozenset[int] = frozenset(),
    storage_dir: str | None = None,
) -> Any:
    """What Tune runs for ``spec``: ``run_pack`` bound to the sweep's setup (its board named
    by ``sweep_uid``; the trials ``ended`` before this driver never trained again; pictures
    kept under a local ``storage_dir``), asking for each pack's ``resources``."""
    stopping = spec.early_stopping.type != "none"
    pictures = str(Path(storage_dir, PICTURES_DIR)) if storage_dir else None
    pack_setup = PackSetup(
        setup, sweep_uid, early_stopping=stopping, ended=ended, pictures_dir=pictures
    )
    return tune.with_resources(
        tune.with_parameters(run_pack, setup=pack_setup), resources.as_tune()
    )


def _local_dir(storage_path: str) -> str | None:
    """``storage_path`` when it is a local directory (a URI is not: nothing is cached)."""
    return None if "://" in storage_path else storage_path


def _board(spec: SweepSpec, sweep_uid: str, progress: SweepProgress) -> Any:
    """The sweep's stopping board (a Ray actor owned by this job), seeded with the curves of
    the trials the sink holds, or None without early stopping."""
    if spec.early_stopping.type == "none":
        return None
    actor = StoppingBoard.options(  # type: ignore[attr-defined]  # ray.remote's class
        name=board_name(sweep_uid), get_if_exists=True
    ).remote(spec.early_stopping, spec.epochs, spec.metric.mode)
    actor.seed.remote(progress.curves(), complete=True, stopped=progress.stopped())
    return actor


def _tuner(
    spec: SweepSpec, sweep_uid: str, storage_path: str, path: str, restore: bool, fn: Any
) -> Any:
    fs = storage_filesystem(storage_path)
    if restore:
        return tune.Tuner.restore(
            path,
            fn,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=fs,
        )
    slots = LIVE[sweep_uid].planner.slots
    tune_config = tune.TuneConfig(
        search_alg=ConcurrencyLimiter(PackSearcher(sweep_uid), max_concurrent=slots),
        num_samples=spec.num_trials,  # at least one trial a pack: the searcher says when done
        reuse_actors=True,  # the data set and torch stay loaded between packs of a worker
        trial_dirname_creator=_trial_dirname,  # the default names it by its trials
    )
    run_config = tune.RunConfig(
        name=experiment_name(sweep_uid),
        storage_path=storage_path,
        storage_filesystem=fs,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # pruned by the storage
        callbacks=[ProgressCallback(sweep_uid)],
        stop=CancelStopper(sweep_uid),
        verbose=0,
    )
    return tune.Tuner(fn, param_space={}, tune_config=tune_config, run_config=run_config)


def _trial_dirname(trial: Trial) -> str:
    """``<trainable>_<trial id>_pack``: retention finds a pack's directory by ``_<id>_``."""
    return f"{trial.trainable_name}_{trial.trial_id}_pack"
