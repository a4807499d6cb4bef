"""A sweep's pictures as PNG bytes: every trial's curves, and each varied setting against the
metric.

Pure functions of :class:`workers.analysis.SweepResults`, drawn on matplotlib's Agg canvas
directly (no GUI backend, no pyplot state: the tracking sender draws on a thread of the API).
matplotlib is imported inside the functions so that importing this module costs nothing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.analysis import Setting, SweepResults, TrialResult, groups, most_influential

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CURVE_METRICS = ("val_accuracy", "val_loss")
"""The panels of ``curves.png``, one metric each, per epoch."""
Colour = Callable[[TrialResult], Any]
"""A trial's colour (a matplotlib colour)."""
DPI = 90
MAX_LEGEND = 10
"""A setting with more listed values than this is coloured by a colour map, not a legend."""
_NOT_RANKED_STYLE = {"linestyle": "--", "alpha": 0.5}  # failed and diverged trials


def curves_png(results: SweepResults) -> bytes:
    """``curves.png``: validation accuracy and loss per epoch, one line per trial, coloured by
    the most influential varied setting, the best trial thick and labelled."""
    from matplotlib import patheffects
    from matplotlib.collections import LineCollection

    fig = _figure(11, 4.2)
    fig.subplots_adjust(left=0.07, right=0.8, bottom=0.13, top=0.86, wspace=0.25)
    axes = [fig.add_subplot(1, len(CURVE_METRICS), i + 1) for i in range(len(CURVE_METRICS))]
    key = most_influential(results)
    colour = _colours(results, key, fig)
    best = _best(results)
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for ranked in (True, False):
            trials = [t for t in results.trials if (t.final(results.metric) is not None) == ranked]
            lines = [_points(t, metric) for t in trials]
            keep = [j for j, line in enumerate(lines) if line]
            ax.add_collection(
                LineCollection(
                    [lines[j] for j in keep],
                    colors=[colour(trials[j]) for j in keep],
                    linewidths=1.0,
                    **({"alpha": 0.8} if ranked else _NOT_RANKED_STYLE),
                )
            )
        if best is not None and (line := _points(best, metric)):
            xs, ys = zip(*line, strict=True)
            outline = [patheffects.Stroke(linewidth=5, foreground="black"), patheffects.Normal()]
            ax.plot(
                xs, ys, color=colour(best), linewidth=3, path_effects=outline,
                label=f"best: #{best.number}, {results.metric} {_final(best, results.metric):.4g}",
            )  # fmt: skip
        ax.autoscale_view()
        if best is not None and (line := _points(best, metric)):
            # Ending at the curve's last point, above it or (near the top) below it: inside the
            # axes wherever the curve ends.
            low, high = ax.get_ylim()
            near_top = (line[-1][1] - low) / ((high - low) or 1.0) > 0.85
            ax.annotate(
                f"#{best.number}", line[-1], xytext=(-4, -6 if near_top else 6),
                textcoords="offset points", ha="right", va="top" if near_top else "bottom",
                fontsize=8,
            )  # fmt: skip
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
    if best is not None:
        axes[0].legend(fontsize=7, loc="best")
    _title_above(fig, _title(results, key))
    return _png(fig)


def parameters_png(results: SweepResults) -> bytes:
    """``parameters.png``: each varied setting against the trials' final metric: a box and
    strip plot per value of a categorical setting, a scatter (log x for a logarithmic range)
    for a numeric one."""
    settings = list(results.settings) or [Setting("(nothing varied)", "category", True)]
    cols = min(3, len(settings))
    rows = math.ceil(len(settings) / cols)
    fig = _figure(4.2 * cols + 2.2, 3.4 * rows + 0.4)
    fig.subplots_adjust(
        left=0.8 / fig.get_figwidth(), right=1 - 2.4 / fig.get_figwidth(),
        bottom=0.7 / fig.get_figheight(), top=1 - 0.5 / fig.get_figheight(),
        wspace=0.3, hspace=0.45,
    )  # fmt: skip
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(len(settings))]
    colour = _colours(results, most_influential(results), fig)
    for ax, setting in zip(axes, settings, strict=True):
        if setting.scale == "category":
            _strip(ax, results, setting, colour)
        else:
            _scatter(ax, results, setting, colour)
        ax.set(xlabel=setting.key, ylabel=results.metric)
        ax.grid(alpha=0.3)
    _title_above(fig, f"{results.name}: final {results.metric} per setting")
    return _png(fig)


def _strip(ax: Axes, results: SweepResults, setting: Setting, colour: Colour) -> None:
    by_value = groups(results, setting)
    if not by_value:
        return
    values = [[_final(t, results.metric) for t in ts] for ts in by_value.values()]
    ax.boxplot(values, showfliers=False, widths=0.5)
    xs, ys, cs = [], [], []
    for i, trials in enumerate(by_value.values()):
        for j, t in enumerate(trials):
            xs.append(i + 1 + 0.15 * math.sin(j * 2.4))  # deterministic jitter
            ys.append(_final(t, results.metric))
            cs.append(colour(t))
    ax.scatter(xs, ys, s=14, c=cs, alpha=0.75, zorder=3)
    ax.set_xticks(range(1, len(values) + 1), list(by_value), rotation=20, fontsize=8)


def _scatter(ax: Axes, results: SweepResults, setting: Setting, colour: Colour) -> None:
    trials = [
        t for t in results.trials if setting.key in t.params and t.final(results.metric) is not None
    ]
    if trials:
        xs = [float(t.params[setting.key]) for t in trials]
        ys = [_final(t, results.metric) for t in trials]
        ax.scatter(xs, ys, s=16, c=[colour(t) for t in trials], alpha=0.75)
    if setting.scale == "log":
        _log_axis(ax)


def _colours(results: SweepResults, key: str | None, fig: Figure) -> Colour:
    """A function from a trial to its colour by the setting ``key``, and its legend (listed
    values) or colour bar (numbers from a range or many values) right of ``fig``'s axes."""
    import matplotlib as mpl

    if key is None:
        return lambda t: "tab:blue"
    setting = results.setting(key)
    values = sorted({t.params[key] for t in results.trials if key in t.params}, key=_sortable)
    numeric = setting.scale != "category"
    if not numeric or (setting.listed and len(values) <= MAX_LEGEND):
        cmap = mpl.colormaps["tab10" if len(values) <= 10 else "tab20"]
        index = {v: cmap(i % cmap.N) for i, v in enumerate(values)}
        handles = [mpl.lines.Line2D([], [], color=c, label=_short(v)) for v, c in index.items()]
        fig.legend(
            handles=handles, title=_short(key), loc="upper left", fontsize=7, title_fontsize=7,
            bbox_to_anchor=(_right(fig), 1 - 0.5 / fig.get_figheight()), alignment="left",
        )  # fmt: skip
        return lambda t: index.get(t.params.get(key), "grey")
    norm_cls = mpl.colors.LogNorm if setting.scale == "log" else mpl.colors.Normalize
    floats = [float(v) for v in values]
    norm = norm_cls(min(floats), max(floats)) if floats else norm_cls(1, 10)
    cmap = mpl.colormaps["viridis"]
    mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    cax = fig.add_axes((_right(fig) + 0.01, 0.15, 0.015, 0.7))
    fig.colorbar(mappable, cax=cax, label=key)
    return lambda t: cmap(norm(float(t.params[key]))) if key in t.params else "grey"


def _log_axis(ax: Axes) -> None:
    """A log x axis whose labels never crowd: plain numbers at 1, 2 and 5 times the powers of
    ten over a range of two decades or less, at the powers of ten (at most five) over more."""
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_xscale("log")
    low, high = ax.get_xlim()
    decades = math.log10(high / low) if low > 0 and high > low else 1.0
    subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=6))
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:.3g}")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


def _short(value: Any, limit: int = 24) -> str:
    """A value or key as a legend shows it: at most ``limit`` characters."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _title_above(fig: Figure, text: str) -> None:
    """The figure's title a fixed distance from the top, above the axes however tall."""
    fig.suptitle(text, fontsize=10, y=1 - 0.12 / fig.get_figheight(), va="top")


def _right(fig: Figure) -> float:
    """Where the axes end: legends and colour bars go right of it."""
    return float(fig.subplotpars.right) + 0.01


def _sortable(value: Any) -> tuple[int, Any]:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return (0, value) if is_number else (1, str(value))


def _best(results: SweepResults) -> TrialResult | None:
    from workers.analysis import ranked

    first = ranked(results)[:1]
    return first[0][1] if first and first[0][0] is not None else None


def _final(trial: TrialResult, metric: str) -> float:
    """The final value of a trial known to have one."""
    value = trial.final(metric)
    return math.nan if value is None else value


def _points(trial: TrialResult, metric: str) -> list[tuple[int, float]]:
    return [(e, m[metric]) for e, m in trial.curve if metric in m and math.isfinite(m[metric])]


def _title(results: SweepResults, key: str | None) -> str:
    done = sum(t.final(results.metric) is not None for t in results.trials)
    colour = f", coloured by {key}" if key else ""
    counts = f"{len(results.trials)} trials ({done} ranked)"
    return f"{results.name}: {counts}{colour}; dashed: failed or diverged"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins, not a layout engine: constrained layout measures every tick label and
    # would double the time to draw.
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
