"""``sweeps lecture``: the lecture's claims, one sweep file each, run through the API and written
up as one Markdown page with its figures.

A study file is an ordinary sweep file whose leading comments say what it shows::

    # Momentum and Nesterov against plain minibatch SGD.        (the title)
    # Claim: momentum trains faster than plain SGD ...           (what the lecture argues)
    # by: variant                                                (the setting compared)
    # expect: nesterov >= momentum > plain                       (the claim as an order)

Every setting is judged at its own best learning rate, by the mean over seeds there (see
:func:`service.cli.report.build_report`). ``expect`` orders the compared values best first; the
page says, per study, whether the measured means keep that order.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from service.cli.client import SweepsClient
from service.cli.report import build_report
from service.errors import ServiceError
from workers.analysis import LR, Comparison, SweepResults
from workers.summary import report_markdown

_HEADER = re.compile(r"^#\s*(?:(claim|by|expect):\s*)?(.*)$", re.IGNORECASE)
BATCH, GRAD_NOISE = "optim.batch_size", "grad_noise"
console = Console()


class StudyError(ServiceError):
    """A study file lacks what the page needs (its claim, the compared setting)."""


@dataclass(frozen=True)
class Study:
    """One claim of the lecture: its sweep file and what the page says about it."""

    path: Path
    title: str
    claim: str
    by: str
    expect: str
    spec: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        """The study's short name: its file's stem (``momentum``)."""
        return self.path.stem

    def with_seeds(self, seeds: list[int]) -> Study:
        """The same study trained with ``seeds``."""
        spec = {**self.spec, "parameters": {**self.spec["parameters"], "seed": list(seeds)}}
        return dataclasses.replace(self, spec=spec)

    @classmethod
    def read(cls, path: Path) -> Study:
        """Read a study file; raises :class:`StudyError` when a header line is missing."""
        text = path.read_text()
        header: dict[str, str] = {}
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            match = _HEADER.match(line)
            if match:
                key = (match.group(1) or "title").lower()
                header.setdefault(key, match.group(2).strip())
        missing = [k for k in ("title", "claim", "by") if not header.get(k)]
        if missing:
            raise StudyError(f"{path}: add the leading comment line(s) {', '.join(missing)}")
        spec = yaml.safe_load(text)
        return cls(
            path, header["title"], header["claim"], header["by"], header.get("expect", ""), spec
        )


def read_studies(folder: Path) -> list[Study]:
    """Every study file of ``folder``, by name."""
    studies = [Study.read(p) for p in sorted(folder.glob("*.yaml"))]
    if not studies:
        raise StudyError(f"no study files (*.yaml) in {folder}")
    return studies


MARGIN = 0.01
"""How much worse a value may be and still count as "as good" (``>=``): one point of accuracy."""
MIN_SEEDS = 3
"""Fewer seeds per value than this and a claim is not judged."""
RESAMPLES = 4000
CONFIDENCE = 0.95


def difference(a: Mapping[str, float], b: Mapping[str, float], sign: float) -> Interval:
    """The mean of ``a`` minus the mean of ``b`` (times ``sign``: positive when ``a`` is
    better) with its :data:`CONFIDENCE` bootstrap interval: seeds resampled in pairs when
    ``a`` and ``b`` share their seeds, each side on its own otherwise. A fixed random stream:
    the same scores give the same interval."""
    rng = random.Random(0)
    shared = sorted(set(a) & set(b))
    if len(shared) == len(a) == len(b):
        diffs = [sign * (a[s] - b[s]) for s in shared]
        draws = [statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(RESAMPLES)]
        point = statistics.fmean(diffs)
    else:
        xs, ys = list(a.values()), list(b.values())
        draws = [
            sign * (statistics.fmean(rng.choices(xs, k=len(xs)))
                    - statistics.fmean(rng.choices(ys, k=len(ys))))
            for _ in range(RESAMPLES)
        ]  # fmt: skip
        point = sign * (statistics.fmean(xs) - statistics.fmean(ys))
    draws.sort()
    tail = (1 - CONFIDENCE) / 2
    low, high = draws[int(tail * RESAMPLES)], draws[int((1 - tail) * RESAMPLES) - 1]
    return Interval(point, low, high)


@dataclass(frozen=True)
class Interval:
    """A difference between two values' means and its confidence interval."""

    point: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.point:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def verdict(expect: str, rows: Mapping[str, Comparison], goal: str) -> str:
    """Whether the measured ``rows`` (per compared value, at its best learning rate) keep the
    ``expect`` order, with a confidence interval over seeds for every pair judged.

    ``expect`` ranks values best first in tiers: ``a > b`` claims ``a`` better than ``b``: it
    holds when the whole interval of their difference lies above 0, fails when it lies below.
    ``a >= b`` claims ``a`` as good as ``b`` or better: it holds when the interval lies above
    ``-MARGIN``, fails when it lies below 0. ``a, b`` claims nothing between ``a`` and ``b``
    (``a, b > c``: each better than ``c``). Every value of a tier is judged against the next
    value of its tier (unless a comma parts them) and every value of the next tier. The claim
    holds when every pair holds, does not hold when any pair fails, and is undecided otherwise
    (more seeds would tell).
    """
    if not expect:
        return "no expected order given"
    chains = [
        [[v.strip() for v in chain.split(">=")] for chain in tier.split(",")]
        for tier in re.split(r">(?!=)", expect)
    ]  # tier -> comma-separated chains -> values, each as good as the next or better
    tiers = [[v for chain in tier for v in chain] for tier in chains]
    unknown = [v for tier in tiers for v in tier if v not in rows]
    if unknown:
        return f"not judged: no result for {', '.join(unknown)}"
    few = [v for tier in tiers for v in tier if len(rows[v].by_seed) < MIN_SEEDS]
    if few:
        return f"not judged: fewer than {MIN_SEEDS} seeds for {', '.join(few)}"
    sign = 1.0 if goal == "maximize" else -1.0
    pairs = [
        (a, b, ">=") for tier in chains for chain in tier for a, b in itertools.pairwise(chain)
    ]
    pairs += [(a, b, ">") for now, later in itertools.pairwise(tiers) for a in now for b in later]
    failed, open_, held = [], [], []
    for a, b, claim in pairs:
        gap = difference(rows[a].by_seed, rows[b].by_seed, sign)
        text = f"{a} {claim} {b}: {gap}"
        floor = 0.0 if claim == ">" else -MARGIN
        if gap.low > floor:
            held.append(text)
        elif gap.high < 0:
            failed.append(text)
        else:
            open_.append(text)
    if failed:
        return "does not hold on digits: " + "; ".join(failed)
    if open_:
        return "undecided on digits: " + "; ".join(open_)
    return "holds on digits: " + "; ".join(held)


def machine() -> str:
    """One line naming this machine, for the page's date line."""
    cores = os.cpu_count()
    return f"{platform.machine()}, {cores} CPU cores, no GPU, Python {platform.python_version()}"


@dataclass(frozen=True)
class Outcome:
    """A finished study: its sweep, its comparison rows, the verdict on its claim, and its
    report (Markdown whose figures live under the page's assets)."""

    study: Study
    sweep_id: int
    trials: int
    rows: list[Comparison]
    verdict: str
    markdown: str
    extra: str = ""

    def measured(self, goal: str) -> str:
        """The compared values, best first, with their means."""
        sign = -1.0 if goal == "maximize" else 1.0
        ordered = sorted(self.rows, key=lambda r: sign * r.mean)
        return " > ".join(f"{r.value} {r.mean:.3f} ± {r.std:.3f}" for r in ordered)


def run_study(client: SweepsClient, study: Study, assets: Path, link: str) -> Outcome:
    """Run ``study`` through the API to its end, compare it by its setting, judge its claim,
    and write its figures into ``assets`` (linked from the page as ``link``/name)."""
    from service.cli.main import watch

    sweep_id = int(client.submit(study.spec)["id"])
    watch(client, sweep_id)
    report = build_report(client, sweep_id, study.by, level=3)
    assets.mkdir(parents=True, exist_ok=True)
    for name, content in report.figures.items():
        (assets / name).write_bytes(content)
    images = [f"{link}/{name}" for name in report.figures]
    markdown = report_markdown(report.results, study.by, images, level=3)
    has_noise = GRAD_NOISE in _metrics(report.results)
    extra = noise_table(report.results, report.rows) if study.by == BATCH and has_noise else ""
    return Outcome(
        study,
        sweep_id,
        len(report.results.trials),
        report.rows,
        verdict(study.expect, {row.value: row for row in report.rows}, report.results.goal),
        markdown,
        extra,
    )


def noise_table(results: SweepResults, rows: list[Comparison]) -> str:
    """The first epoch's gradient noise per batch size at the smallest learning rate swept
    (where the weights stay nearest their start, so sizes are compared at the same point), and
    times sqrt(batch): constant where the noise falls as 1/sqrt(batch)."""
    rates = sorted({float(t.params[LR]) for t in results.trials if LR in t.params})
    lr = rates[0] if rates else None
    lines = [
        f"Gradient noise in epoch 1{f' at {LR}={lr:g}' if lr is not None else ''}, mean over "
        "seeds; times √batch it is constant where the noise falls as 1/√batch:",
        "",
        "| batch size | grad_noise | × √batch |",
        "|---:|---:|---:|",
    ]
    for row in rows:
        noise = [
            t.curve[0][1][GRAD_NOISE]
            for t in results.trials
            if str(t.params.get(BATCH)) == row.value
            and (lr is None or float(t.params.get(LR, -1)) == lr)
            and t.curve
            and GRAD_NOISE in t.curve[0][1]
        ]
        if noise:
            mean = statistics.fmean(noise)
            scaled = mean * math.sqrt(float(row.value))
            lines.append(f"| {row.value} | {mean:.4g} | {scaled:.4g} |")
    return "\n".join(lines)


def _metrics(results: SweepResults) -> set[str]:
    return {name for t in results.trials for _, m in t.curve for name in m}


def headline(outcomes: list[Outcome], goal: str = "maximize") -> str:
    """One row per study: the claim's expected order, the measured one, the verdict."""
    lines = [
        "| study | compared | expected (best first) | measured: mean ± std at each value's best "
        "lr | verdict |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        cells = [o.study.name, o.study.by, o.study.expect, o.measured(goal), o.verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def page(outcomes: list[Outcome], when: str, where: str, minutes: float) -> str:
    """The whole ``lecture.md``: how it was measured, the headline table, then each study."""
    trials = sum(o.trials for o in outcomes)
    lines = [
        "# The lecture's claims, measured on digits",
        "",
        f"Generated by `make lecture` on {when} ({where}): {len(outcomes)} sweeps, {trials} "
        f"trials, {minutes:.0f} minutes, each sweep submitted to the REST API of the embedded "
        "stack. Every compared value is judged at its own best learning rate, by its final "
        "validation accuracy per seed there. For each pair the claim orders, the verdict gives "
        f"the difference of means and its {CONFIDENCE:.0%} bootstrap interval over seeds "
        "(resampled in pairs: both values trained with the same seeds). `a > b` holds when "
        "the interval lies above 0 and fails when it lies below; `a >= b` (as good or better) "
        f"holds when it lies above -{MARGIN:g} and fails when it lies below 0; `a, b` claims "
        "nothing between `a` and `b`. A claim holds "
        "when every pair holds, does not hold when one fails, and is otherwise undecided: "
        "more seeds would tell. The sweep files are in `examples/lecture/`.",
        "",
        "## Headline",
        "",
        headline(outcomes),
        "",
    ]
    for o in outcomes:
        lines += [
            f"## {o.study.title}",
            "",
            f"**Claim.** {o.study.claim}",
            "",
            f"**Expected:** {o.study.expect}. **Verdict:** {o.verdict}. "
            f"(`examples/lecture/{o.study.path.name}`, sweep {o.sweep_id}, {o.trials} trials)",
            "",
        ]
        if o.extra:
            lines += [o.extra, ""]
        lines += [o.markdown, ""]
    return "\n".join(lines)


HEADLINE_START, HEADLINE_END = "<!-- lecture:start -->", "<!-- lecture:end -->"
"""Markers of the README's copy of the headline table, which ``make lecture`` refreshes."""


def refresh_readme(readme: Path, outcomes: list[Outcome], when: str, where: str) -> bool:
    """Put the headline table between the README's markers; False when it has none."""
    text = readme.read_text()
    if HEADLINE_START not in text or HEADLINE_END not in text:
        return False
    head, rest = text.split(HEADLINE_START, 1)
    _, tail = rest.split(HEADLINE_END, 1)
    body = f"Measured on {when} ({where}); details in `docs/lecture.md`.\n\n{headline(outcomes)}"
    readme.write_text(f"{head}{HEADLINE_START}\n{body}\n{HEADLINE_END}{tail}")
    return True


def run(
    client: SweepsClient,
    folder: Path,
    out: Path,
    readme: Path | None,
    seeds: list[int] | None = None,
) -> int:
    """``sweeps lecture``: run every study of ``folder`` (with ``seeds`` instead of each file's
    own, when given), write ``out``/lecture.md with its figures under ``out``/lecture/, and
    refresh the README's headline table."""
    studies = read_studies(folder)
    if seeds:
        studies = [s.with_seeds(seeds) for s in studies]
    started = time.monotonic()
    outcomes = [
        run_study(client, s, out / "lecture" / s.name, f"lecture/{s.name}") for s in studies
    ]
    when, where = date.today().isoformat(), machine()
    minutes = (time.monotonic() - started) / 60
    (out / "lecture.md").write_text(page(outcomes, when, where, minutes))
    console.print(f"wrote {out / 'lecture.md'}")
    if readme is not None and refresh_readme(readme, outcomes, when, where):
        console.print(f"refreshed the headline table in {readme}")
    console.print(headline(outcomes))
    return 0


def seed_range(text: str) -> list[int]:
    """``10-19`` (both ends included) or ``3``, as a list of seeds."""
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give seeds as FIRST-LAST, e.g. 10-19"
        ) from None
    if first < 0 or last < first:
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as FIRST-LAST, FIRST <= LAST")
    return list(range(first, last + 1))


def add_parser(sub: Any, client: Callable[[argparse.Namespace], SweepsClient], stack: Any) -> None:
    """Register ``sweeps lecture`` on the subcommands ``sub``: against the API of ``--url``, or
    (``--up``) on an embedded stack that ``stack()`` starts and stops."""
    cmd = sub.add_parser("lecture", help="run the lecture's studies and write docs/lecture.md")
    cmd.add_argument("folder", type=Path, nargs="?", default=Path("examples/lecture"))
    cmd.add_argument("--out", type=Path, default=Path("docs"), help="where lecture.md goes")
    cmd.add_argument("--readme", type=Path, default=Path("README.md"))
    cmd.add_argument("--up", action="store_true", help="start the embedded stack for the run")
    cmd.add_argument(
        "--seeds", type=seed_range, help="the seeds of every study instead of its file's: 10-19"
    )

    def go(args: argparse.Namespace) -> int:
        if not args.up:
            return run(client(args), args.folder, args.out, args.readme, args.seeds)
        with stack() as (_, settings):
            api = SweepsClient(args.url or settings.api_url, args.token)
            return run(api, args.folder, args.out, args.readme, args.seeds)

    cmd.set_defaults(run=go)
