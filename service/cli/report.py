"""``sweeps report``: how a sweep's settings compare, in the terminal and as Markdown with figures.

For each value of a setting (``--by``; by default the most influential one, see
:mod:`workers.analysis`) the report gives its best learning rate, the final metric's mean ±
standard deviation over seeds at that rate, and the number of trials. ``--out DIR`` writes
``report.md`` (that table, the figures, the ranked trials) with ``curves.png`` and
``parameters.png`` beside it. Everything is read over the API; :func:`build_report` gives the
same to a script (the lecture's page assembles several).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service.cli.client import SweepsClient
from service.errors import ServiceError
from workers.analysis import (
    LR,
    Comparison,
    SweepResults,
    TrialResult,
    compare,
    influence,
    most_influential,
    settings_of,
)

REPORT_FILE = "report.md"
CURVES, PARAMETERS = "curves.png", "parameters.png"
"""The figures' file names, as on a sweep's MLflow parent run (``workers.tracking`` names
them there; the CLI does not import it, which would load mlflow)."""
PAGE = 500
"""Trials asked for per request of the trial list (the API's largest page)."""
console = Console()


class ReportError(ServiceError):
    """The sweep cannot be reported as asked (nothing varied, an unknown ``--by``)."""


@dataclass(frozen=True)
class Report:
    """A sweep's comparison by ``by``: its rows, its Markdown and its figures (file name ->
    PNG bytes; the Markdown links them by these names)."""

    sweep_id: int
    by: str
    results: SweepResults
    rows: list[Comparison]
    markdown: str
    figures: dict[str, bytes]

    def write(self, folder: Path) -> list[Path]:
        """Write ``report.md`` and the figures into ``folder`` (made if missing)."""
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / REPORT_FILE]
        written[0].write_text(self.markdown)
        for name, content in self.figures.items():
            (folder / name).write_bytes(content)
            written.append(folder / name)
        return written


def fetch_results(client: SweepsClient, sweep_id: int) -> SweepResults:
    """The sweep's trials with their whole curves, read over the API (one request per trial,
    after the list)."""
    sweep = client.get(sweep_id)
    numbers: list[int] = []
    while len(numbers) < (page := client.trials(sweep_id, offset=len(numbers)))["count"]:
        if not page["data"]:
            break  # trials removed meanwhile: take what was listed
        numbers += [t["number"] for t in page["data"]]
    trials = [_trial(sweep["name"], client.trial(sweep_id, n)) for n in numbers]
    return SweepResults(
        name=sweep["name"],
        metric=sweep["spec"]["metric"]["name"],
        goal=sweep["spec"]["metric"]["goal"],
        settings=settings_of(sweep["spec"]["parameters"]),
        trials=trials,
    )


def _trial(sweep_name: str, t: dict[str, Any]) -> TrialResult:
    curve = [(p["epoch"], p["metrics"]) for p in t["curve"]]
    name = f"{sweep_name} #{t['number']}"
    return TrialResult(t["number"], name, t["status"], t["params"], curve)


def build_report(
    client: SweepsClient, sweep_id: int, by: str | None = None, level: int = 1
) -> Report:
    """The report of sweep ``sweep_id`` compared by ``by`` (default: its most influential
    setting), headings from ``level``.

    Raises:
        ReportError: nothing is varied, or ``by`` is not a varied setting.
        service.cli.client.ApiError: the API refused or could not be reached.
    """
    from workers.plots import curves_png, parameters_png
    from workers.summary import report_markdown

    results = fetch_results(client, sweep_id)
    by = by or most_influential(results)
    if by is None:
        raise ReportError(f"sweep {sweep_id} varies no setting: there is nothing to compare")
    try:
        rows = compare(results, by)
    except KeyError as err:
        raise ReportError(f"--by {err.args[0]}") from None
    figures = {CURVES: curves_png(results), PARAMETERS: parameters_png(results)}
    markdown = report_markdown(results, by, list(figures), level)
    return Report(sweep_id, by, results, rows, markdown, figures)


def add_parser(
    sub: Any, client: Callable[[argparse.Namespace], SweepsClient]
) -> argparse.ArgumentParser:
    """Register ``sweeps report`` on the subcommands ``sub``; ``client`` makes the API client
    from the parsed arguments."""
    cmd: argparse.ArgumentParser = sub.add_parser(
        "report", help="compare a sweep's settings (best lr, mean ± std over seeds)"
    )
    cmd.add_argument("sweep_id", type=int)
    cmd.add_argument("--by", help="the setting to compare (default: the most influential)")
    cmd.add_argument("--out", type=Path, help="write report.md, curves.png, parameters.png here")
    cmd.set_defaults(run=lambda args: run(client(args), args.sweep_id, args.by, args.out))
    return cmd


def run(client: SweepsClient, sweep_id: int, by: str | None, out: Path | None) -> int:
    """``sweeps report``: print the comparison, and write the report when ``out`` is given."""
    try:
        report = build_report(client, sweep_id, by)
    except ReportError as err:
        console.print(f"[red]error:[/] {err}")
        return 2
    show(report)
    if out is not None:
        for path in report.write(out):
            console.print(f"wrote {path}")
    return 0


def show(report: Report) -> None:
    """Print the comparison table and each varied setting's influence."""
    results = report.results
    lr = any(s.key == LR for s in results.settings) and report.by != LR
    title = f"sweep {report.sweep_id} {results.name}: final {results.metric} by {report.by}"
    table = Table(report.by, *([f"best {LR}"] if lr else []), "mean ± std", "n", "trials")
    for row in report.rows:
        best_lr = [f"{row.lr:.4g}" if row.lr is not None else ""] if lr else []
        table.add_row(
            row.value, *best_lr, f"{row.mean:.4f} ± {row.std:.4f}", str(row.n), str(row.trials)
        )
    table.title = title
    console.print(table)
    scores = ", ".join(f"{k} {v:.2f}" for k, v in influence(results).items())
    console.print(f"influence on {results.metric} (eta squared): {scores}")
