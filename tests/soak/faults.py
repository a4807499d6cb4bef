"""The soak's fault injector: seeded, logged faults on the stack's real processes, overlapping.

Each fault kind acts on one component and, for those with a duration, puts it back after it:
a trial worker or a sweep driver SIGKILLed (Ray and the monitor recover them), the API killed
and restarted, MLflow and PostgreSQL stopped and started, the Ray worker node killed and a new
one joined, the Ray dashboard (Jobs API) paused. One fault of a kind at a time; kinds overlap.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("trial_worker", "driver", "api", "mlflow", "postgres", "ray_node", "dashboard")


@dataclass
class Fault:
    """One fault as it happened: kind, what it hit, when it began and ended (monotonic s since
    the soak started)."""

    kind: str
    target: str
    began: float
    ended: float = field(default=-1.0)


WEIGHTS = {"trial_worker": 3, "driver": 3, "dashboard": 2}
"""How much likelier than an outage of the API, MLflow, PostgreSQL or a node a kill of one
process is (a weight of 1): outages every few seconds would leave the stack down more than up."""


REST_S = 30.0
"""How long a component is left alone after its last fault ended (its restart done): a
restart takes tens of seconds here under load (MLflow's up to a minute), and a component hit
again as soon as it is back would be down most of the time, which no deployment sees."""


GAP_S = (10.0, 20.0)
"""Seconds between two draws of a fault: about three faults a minute once the skipped draws
are counted, one for every three sweeps on the 2-core machine (the 35-minute run: 106 faults,
331 sweeps). At 4-10 s (about four a minute, two for every sweep) it took 139 sweeps an hour;
without faults it takes 13 a minute."""


class Injector:
    """Fires a fault every ``gap`` seconds (drawn from ``rng``) until stopped: every kind
    once, in a random order, then kinds drawn at random by :data:`WEIGHTS`; a kind whose last
    fault is still on, or ended less than :data:`REST_S` ago, is skipped. ``actions[kind]()``
    injects and returns (target, restore or None)."""

    def __init__(
        self,
        actions: dict[str, Callable[[], tuple[str, Callable[[], None] | None]]],
        rng: random.Random,
        log: Path,
        gap: tuple[float, float] = GAP_S,
        duration: tuple[float, float] = (3.0, 15.0),
    ) -> None:
        self.actions, self.rng, self.log = actions, rng, log
        self.gap, self.duration = gap, duration
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._active: set[str] = set()
        self._back_at: dict[str, float] = {}  # kind -> when its last fault ended
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = time.monotonic()
        self._main = threading.Thread(target=self._run, name="soak-faults", daemon=True)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._main.start()

    def stop(self) -> None:
        """No new fault; every fault on is put back (its restore runs at once)."""
        self._stop.set()
        self._main.join(60)
        for t in self._threads:
            t.join(120)

    def _run(self) -> None:
        order = list(self.actions)
        self.rng.shuffle(order)
        while not self._stop.wait(self.rng.uniform(*self.gap)):
            kinds = list(self.actions)
            weights = [WEIGHTS.get(k, 1) for k in kinds]
            kind = order.pop(0) if order else self.rng.choices(kinds, weights)[0]
            with self._lock:
                rested = time.monotonic() - self._back_at.get(kind, -REST_S) >= REST_S
                if kind in self._active or not rested:
                    continue
                self._active.add(kind)
            t = threading.Thread(target=self._fire, args=(kind,), name=f"fault-{kind}")
            self._threads.append(t)
            t.start()

    def _fire(self, kind: str) -> None:
        began = time.monotonic() - self._t0
        try:
            target, restore = self.actions[kind]()
            fault = Fault(kind, target, began)
            if restore is not None:
                self._stop.wait(self.rng.uniform(*self.duration))
                restore()
            fault.ended = time.monotonic() - self._t0
            with self._lock:
                self.faults.append(fault)
            with open(self.log, "a") as out:
                out.write(json.dumps(asdict(fault)) + "\n")
        except Exception as err:  # a fault that could not be injected is reported, not fatal
            self.errors.append(f"{kind}: {err!r}")
        finally:
            with self._lock:
                self._active.discard(kind)
                self._back_at[kind] = time.monotonic()

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of faults of different kinds that were on at the same time."""
        spans = [f for f in self.faults if f.ended > f.began]
        return [
            (a.kind, b.kind)
            for i, a in enumerate(spans)
            for b in spans[i + 1 :]
            if a.kind != b.kind and a.began < b.ended and b.began < a.ended
        ]


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def naming(marker: bytes, *, cmdline_has: bytes) -> list[int]:
    """Our processes whose command line contains ``cmdline_has`` and
    whose environment or command line, or their parent's, names ``marker`` (a Ray worker that
    retitles itself may overwrite its environment's copy in ``/proc``; its parent, a raylet or
    a zygote, names the cluster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline_has not in args:
            continue
        if _names(entry, marker) or _names(Path(f"/proc/{_ppid(entry)}"), marker):
            found.append(int(entry.name))
    return found


def _names(entry: Path, marker: bytes) -> bool:
    try:
        return marker in (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
    except OSError:
        return False


def _ppid(entry: Path) -> int:
    try:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
