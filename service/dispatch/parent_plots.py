"""The pictures and table of a sweep's MLflow parent run, drawn from the database.

``curves.png``, ``parameters.png`` and ``summary.md`` (:mod:`workers.plots`,
:mod:`workers.summary`) are drawn by the tracking sender, on its thread: while a sweep runs,
again when it has new epochs, at most every ``every_s``; once more, always, when it has ended,
before its parent run is closed. Each upload replaces the run's file, so one repeated after a
crash is harmless. Drawing costs a few tenths of a second for a hundred trials; a drawing that
fails is logged and skipped, never a reason to hold back the sweep's metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence

from sqlalchemy.orm import Session, sessionmaker

from service.store import tracking as journal
from service.store.db import session_scope
from service.store.models import MlflowRun, Sweep, Trial
from workers.analysis import SweepResults, TrialResult, settings_of
from workers.tracking import CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT, MlflowRuns

log = logging.getLogger(__name__)
PLOTS_EVERY_S = 10.0
"""How often, at most, a running sweep's pictures are drawn again (when it has news)."""

TrialRows = Sequence[tuple[Trial, MlflowRun | None, int]]
"""The sweep's trials as :func:`service.store.tracking.trials_with_runs` reads them."""


class ParentPlots:
    """Draws and uploads the parent run's files of each sweep (see the module)."""

    def __init__(
        self, factory: sessionmaker[Session], runs: MlflowRuns, every_s: float = PLOTS_EVERY_S
    ) -> None:
        self.factory, self.runs, self.every_s = factory, runs, every_s
        self._shown: dict[int, Hashable] = {}  # sweep id -> the trials' progress last drawn
        self._next: dict[int, float] = {}  # sweep id -> when it may be drawn again
        self._pending: set[int] = set()  # sweeps with news not drawn yet (too soon)

    def due(self, sweep_id: int) -> bool:
        """Whether the sweep has news held back that may now be drawn."""
        return sweep_id in self._pending and time.monotonic() >= self._next[sweep_id]

    def refresh(self, sweep: Sweep, parent: str, trials: TrialRows) -> None:
        """Draw and upload the files when the trials moved on and the last drawing is old
        enough; otherwise remember that there is news.

        Raises:
            workers.errors.TrackingError: MLflow failed an upload (the next pass draws again).
        """
        progress = tuple((t.number, t.status, last) for t, _, last in trials)
        if progress == self._shown.get(sweep.id) or not any(last for *_, last in trials):
            return  # nothing new, or no epoch to draw yet
        if time.monotonic() < self._next.get(sweep.id, 0.0):
            self._pending.add(sweep.id)
            return
        self.upload(sweep, parent, trials)
        self._shown[sweep.id] = progress

    def upload(self, sweep: Sweep, parent: str, trials: TrialRows) -> None:
        """Draw the files from the sweep's stored epochs and upload them to ``parent``.

        Raises:
            workers.errors.TrackingError: MLflow failed an upload.
        """
        self._pending.discard(sweep.id)
        self._next[sweep.id] = time.monotonic() + self.every_s
        files = self._draw(sweep, trials)
        for path, content in files.items():
            self.runs.log_file(parent, content, path)

    def forget(self, sweep_id: int) -> None:
        """The sweep is delivered: nothing more to draw."""
        for table in (self._shown, self._next):
            table.pop(sweep_id, None)
        self._pending.discard(sweep_id)

    def _draw(self, sweep: Sweep, trials: TrialRows) -> dict[str, bytes]:
        from workers.plots import curves_png, parameters_png
        from workers.summary import summary_markdown

        started = time.perf_counter()
        try:
            results = self.results(sweep, trials)
            files = {
                CURVES_ARTIFACT: curves_png(results),
                PARAMETERS_ARTIFACT: parameters_png(results),
                SUMMARY_ARTIFACT: summary_markdown(results).encode(),
            }
        except Exception:  # a drawing bug must not stop delivery of the sweep's metrics
            log.exception("tracking: cannot draw the pictures of sweep %s", sweep.id)
            return {}
        log.debug("tracking: drew sweep %s in %.3f s", sweep.id, time.perf_counter() - started)
        return files

    def results(self, sweep: Sweep, trials: TrialRows) -> SweepResults:
        """The sweep's trials and their stored curves, as the drawings take them."""
        with session_scope(self.factory) as session:
            curves = journal.sweep_curves(session, sweep.id)
        return SweepResults(
            name=sweep.name,
            metric=sweep.metric_name,
            goal=sweep.metric_goal,
            settings=settings_of(sweep.spec.get("parameters", {})),
            trials=[
                TrialResult(
                    number=t.number,
                    name=t.run_name or f"{sweep.name} #{t.number}",
                    status=t.status,
                    params=t.params or {},
                    curve=[(e.epoch, e.metrics) for e in curves.get(t.id, [])],
                )
                for t, _, _ in trials
            ],
        )
