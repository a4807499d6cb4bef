"""Where the CPU went during a benchmark run: CPU seconds per role of process, from /proc.

A background thread samples every process of this user every ``period`` seconds and keeps each
one's last seen CPU time (user + system), so a process that exits during the run (a sweep's job,
a Ray worker) still counts up to its last sample. Roles come from the command line.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
ROLES = (
    ("mlflow", ("mlflow",)),
    ("api", ("service.api.app",)),
    ("sweep driver", ("service.job",)),
    ("ray workers", ("ray::", "default_worker.py")),
    ("ray system", ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "ray/")),
)


def role_of(cmdline: str) -> str:
    """The role of a process with this command line (``other`` when none matches)."""
    for role, needles in ROLES:
        if any(n in cmdline for n in needles):
            return role
    return "other"


def _cpu_seconds(pid: str) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return None


def _cmdline(pid: str) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    return ""


class CpuMeter:
    """CPU seconds per role between :meth:`start` and :meth:`stop`; this process is ``bench``."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self._base: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._role: dict[str, str] = {}
        self.cmdline: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, first: bool) -> None:
        me = str(os.getpid())
        for entry in os.scandir("/proc"):
            pid = entry.name
            if not pid.isdigit():
                continue
            cpu = _cpu_seconds(pid)
            if cpu is None:
                continue
            if pid not in self._role:
                self.cmdline[pid] = _cmdline(pid)
                self._role[pid] = "bench" if pid == me else role_of(self.cmdline[pid])
                self._base[pid] = cpu if first else 0.0
            self._last[pid] = cpu

    def start(self) -> None:
        """Take the baseline and start sampling."""
        self._base.clear()
        self._last.clear()
        self._role.clear()
        self._stop.clear()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample(first=False)

    def stop(self) -> dict[str, float]:
        """Stop sampling; CPU seconds per role since :meth:`start`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(first=False)
        out: dict[str, float] = {}
        for pid, last in self._last.items():
            role = self._role[pid]
            out[role] = out.get(role, 0.0) + max(0.0, last - self._base[pid])
        return out
