"""A sweep's tables as Markdown: the ranked trials (``summary.md``) and the per-value
comparison of ``sweeps report``.

Pure functions of :class:`workers.analysis.SweepResults`; headings start at a level the caller
picks, so a report can be pasted into a larger document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.analysis import LR, Comparison, SweepResults, compare, influence, ranked


def summary_markdown(results: SweepResults, level: int = 1) -> str:
    """``summary.md``: the sweep's trials ranked by their final metric, with each varied
    setting's influence."""
    head = "#" * level
    lines = [
        f"{head} {_cell(results.name)}: trials ranked by final {results.metric}",
        "",
        _influence_line(results),
        "",
        ranked_table(results),
    ]
    return "\n".join(lines) + "\n"


def _influence_line(results: SweepResults) -> str:
    n = len(results.trials)
    unranked = sum(1 for rank, _ in ranked(results) if rank is None)
    text = f"{n} trials ({results.goal} {results.metric})"
    if unranked:
        text += f"; {unranked} without a final value (failed, diverged or not yet reported)"
    scores = influence(results)
    if scores:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
        text += (
            f". Influence (share of the final {results.metric}'s variance between a setting's "
            f"values, eta squared): {shown}."
        )
    return text


def ranked_table(results: SweepResults) -> str:
    """The ranked trial table: rank, run name, status, varied settings, final and best
    metric, epochs reported."""
    keys = [s.key for s in results.settings]
    m = results.metric
    header = ["rank", "run", "status", *keys, f"final {m}", f"best {m}", "epochs"]
    rows = []
    for rank, t in ranked(results):
        rows.append(
            [
                str(rank) if rank is not None else "-",
                t.name,
                t.status,
                *(_value(t.params.get(k, "")) for k in keys),
                _metric(t.final(m)),
                _metric(t.best(m, results.goal)),
                str(len(t.curve)),
            ]
        )
    return _table(header, rows)


def comparison_table(results: SweepResults, by: str, rows: Sequence[Comparison]) -> str:
    """Per value of ``by``: its best learning rate, the metric's mean ± standard deviation at
    that rate over seeds, how many trials that mean is over, and how many had the value."""
    lr = any(s.key == LR for s in results.settings) and by != LR
    header = [by, *([f"best {LR}"] if lr else []), f"{results.metric} mean ± std", "n", "trials"]
    body = [
        [
            r.value,
            *([_value(r.lr)] if lr else []),
            f"{r.mean:.4f} ± {r.std:.4f}",
            str(r.n),
            str(r.trials),
        ]
        for r in rows
    ]
    return _table(header, body)


def report_markdown(
    results: SweepResults, by: str, images: Sequence[str] = (), level: int = 1
) -> str:
    """The report of ``sweeps report``: the comparison by ``by``, the figures (``images``,
    paths relative to the report) and the ranked trials.

    Raises:
        KeyError: ``by`` is not a varied setting of the sweep.
    """
    rows = compare(results, by)
    head, sub = "#" * level, "#" * (level + 1)
    lr_note = f" at each value's best {LR}" if any(s.key == LR for s in results.settings) else ""
    lines = [
        f"{head} {_cell(results.name)}: {results.metric} by {by}",
        "",
        f"{sub} Comparison",
        "",
        f"Final {results.metric} ({results.goal}) per value of {by}{lr_note}; mean ± standard "
        "deviation over the trials there (its seeds); failed and diverged trials left out.",
        "",
        comparison_table(results, by, rows),
        "",
    ]
    for image in images:
        lines += [f"![{image}]({image})", ""]
    lines += [f"{sub} Trials", "", _influence_line(results), "", ranked_table(results)]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
