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

import platform
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from service.cli.client import SweepsClient
from service.errors import ServiceError

_HEADER = re.compile(r"^#\s*(?:(claim|by|expect):\s*)?(.*)$", re.IGNORECASE)
_ORDER = re.compile(r"\s*(>=|>)\s*")


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


def verdict(expect: str, means: dict[str, float], goal: str) -> str:
    """Whether the measured ``means`` (per compared value) keep the ``expect`` order.

    ``expect`` lists values best first, separated by ``>`` (better) or ``>=`` (at least as
    good, within noise: allowed either way); with no ``expect`` there is nothing to judge.
    """
    if not expect:
        return "no expected order given"
    parts = _ORDER.split(expect.strip())
    values, ops = parts[0::2], parts[1::2]
    unknown = [v for v in values if v not in means]
    if unknown:
        return f"not judged: no result for {', '.join(unknown)}"
    sign = 1.0 if goal == "maximize" else -1.0
    broken = [
        f"{a} is not better than {b}"
        for a, op, b in zip(values[:-1], ops, values[1:], strict=True)
        if op == ">" and not sign * means[a] > sign * means[b]
    ]
    if broken:
        return "does not hold on digits: " + "; ".join(broken)
    return "holds on digits"


def machine() -> str:
    """One line naming this machine, for the page's date line."""
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU used, Python {platform.python_version()}"


def today() -> str:
    """Today's date, ISO."""
    return date.today().isoformat()


def submit_and_wait(client: SweepsClient, study: Study) -> dict[str, Any]:
    """Run one study through the API to its end; returns the ended sweep."""
    from service.cli.main import watch

    sweep = client.submit(study.spec)
    watch(client, int(sweep["id"]))
    return client.get(int(sweep["id"]))
