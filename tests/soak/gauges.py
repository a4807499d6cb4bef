"""The soak's resource table: a row every few seconds of what a long-lived stack must keep
bounded, and the flatness rule it is judged by."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

SERIES = (
    "processes", "open_files", "api_pss_mb", "head_pss_mb", "state_mb", "ray_temp_mb",
    "ray_jobs", "journal_backlog",
)  # fmt: skip
GROWTH = 0.10
"""The most a series may grow from its second quarter to its last: their medians (an outage
that lands in one quarter moves its mean, not its median), or for :data:`PEAKS` their maxima."""
PEAKS = frozenset({"api_pss_mb"})
"""The API's memory, judged by its peaks: a restarted API grows by a one-time step when it
first draws a sweep's pictures (matplotlib), whenever that falls; a leak raises the peak. The
head's is that of its long-lived processes (:func:`long_lived`), judged by its median."""


class Gauges:
    """Samples ``read()`` (a value per name of :data:`SERIES`; None where it could not be
    read then) every ``every`` seconds on a thread, with the time since start."""

    def __init__(self, read: Callable[[], dict[str, float | None]], every: float = 5.0) -> None:
        self.read, self.every = read, every
        self.rows: list[dict[str, float | None]] = []
        self.warm_rows = 0  # rows sampled while the stack warmed up (before :meth:`warm`)
        self.load_rows = 0  # rows sampled until the load ended (before :meth:`drained`)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-gauges", daemon=True)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, with a last row taken now."""
        self._stop.set()
        self._thread.join(60)
        self.rows.append({"t_s": round(time.monotonic() - self._t0, 1), **self.read()})

    def warm(self) -> None:
        """The stack is warm (every kind of fault seen, open sweeps at the limit): later rows
        are judged."""
        self.warm_rows = len(self.rows)

    def drained(self) -> None:
        """The load ends: later rows show the drain, and are not judged."""
        self.load_rows = len(self.rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            row: dict[str, float | None] = {"t_s": round(time.monotonic() - self._t0, 1)}
            try:
                row |= self.read()
            except Exception as err:  # a row that could not be read shows as dashes
                print(f"soak: a row of the table could not be read: {err!r}", flush=True)
            self.rows.append(row)
            self._stop.wait(self.every)

    def not_flat(self, slack: dict[str, float]) -> dict[str, tuple[float, float]]:
        """Series whose last quarter's median (maximum, for :data:`PEAKS`) under load, once
        warm, exceeds their second quarter's by more than :data:`GROWTH` and ``slack[name]``
        (an absolute allowance for counts): name -> (second quarter's, last quarter's)."""
        judged = self.rows[self.warm_rows : self.load_rows]
        n = len(judged)
        grew = {}
        for name in SERIES:
            values = [r.get(name) for r in judged]
            second = [v for v in values[n // 4 : n // 2] if v is not None]
            last = [v for v in values[3 * n // 4 :] if v is not None]
            if not second or not last:
                grew[name] = (float("nan"), float("nan"))
                continue
            pick = max if name in PEAKS else statistics.median
            before, after = pick(second), pick(last)
            if after > before * (1 + GROWTH) + slack.get(name, 0.0):
                grew[name] = (before, after)
        return grew

    def table(self) -> str:
        """The samples as a Markdown table."""
        head = ["t_s", *SERIES]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, row in enumerate(self.rows):
            if i == self.warm_rows and i:
                lines.append("| warm |" + " |" * len(SERIES))
            if i == self.load_rows:
                lines.append("| drain |" + " |" * len(SERIES))
            cells = [_cell(row.get(name)) for name in head]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _cell(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:.1f}"


def pss_mb(pids: list[int]) -> float:
    """Memory of ``pids`` together (MiB), each page shared by n processes counted 1/n times
    (PSS: forked drivers and trial workers share their zygote's pages)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


PER_SWEEP = (b"service.job\0", b"service.job.launch", b"JobSupervisor")
"""Command-line markers of the head's processes that live as long as one sweep (or standby):
its driver, its job's launcher, Ray's supervisor of its job. As many run as sweeps are open
(the API's limit bounds them, and the processes series counts them), each gone with its sweep."""


def long_lived(pids: list[int]) -> list[int]:
    """``pids`` but those of :data:`PER_SWEEP`: what a leak would live in (Ray's own processes,
    the zygotes, the API)."""
    kept = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if not any(marker in cmdline for marker in PER_SWEEP):
            kept.append(pid)
    return kept


def open_files(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def disk_mb(*roots: Path) -> float:
    """Bytes of the regular files under ``roots`` (MiB), links not followed."""
    total = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                total += st.st_size
    return total / (1 << 20)
