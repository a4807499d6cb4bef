"""Benchmark: what hostile or careless bodies cost the API, and what concurrent POSTs wait.

A real API process (uvicorn, the app factory, SQLite in a temporary directory; Ray and MLflow at
closed ports, so sweeps are stored and never trained) answers:

1. **Adversarial bodies** (huge ranges, 1e308, thousands of parameters, deep nesting, long
   strings, the largest grid, corner-heavy rules), each POSTed ``--reps`` times. Reported per
   body: the status code and the median and worst time to the answer, against a plain valid body
   as the baseline (target: every body under 50 ms).
2. **/healthz while they run**: a thread GETs ``/healthz`` back to back, first alone, then while
   another thread POSTs the adversarial bodies in a loop; the ratio of the p99 latencies says
   whether validation ever blocks the event loop (target: p99 under 50 ms either way).
3. **Concurrent POSTs**: 50 at once, ten ``Idempotency-Key`` values each sent five times, p50 and
   p99 latency; exactly ten sweeps and forty replays are checked.

Run: ``make bench-input`` or ``python bench/bench_api_input.py [--reps N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.cli.stack import free_port  # noqa: E402

TOKEN = "bench-token-" + "x" * 20
TARGET_MS = 50.0


FRACTIONS = [
    "augment.affine_p", "augment.channel_shuffle_p", "augment.color_p", "augment.hflip_p",
    "augment.invert_p", "augment.vflip_p", "model.dropout", "optim.momentum",
    "data.val_fraction", "optim.lr",
]  # fmt: skip
"""Settings that take any value in (0, 0.5]: five of them list 1,000 values each."""
CORNERS = {
    "model.norm": ["none", "batch", "layer", "group"],
    "model.groups": [1, 2, 4, 8],
    "model.width": [8, 16, 32, 64],
    "model.depth": [1, 2, 3, 4],
    "model.dropout": [0.1, 0.5],
    "model.dropconnect": [False, True],
}
"""The model's settings, 1,024 combinations that its rules check one by one."""


def body(parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "bench", "parameters": parameters, "epochs": 2, **extra}


def nested(depth: int) -> str:
    """A JSON body nested ``depth`` levels deep, inside an otherwise plausible spec."""
    return '{"name": "deep", "parameters": {"optim.lr": ' + "[" * depth + "]" * depth + "}}"


def bodies() -> dict[str, bytes]:
    """The adversarial bodies, as the raw bytes sent (some are not valid JSON specs at all)."""
    as_json: dict[str, Any] = {
        "int range 0..1e18": body({"seed": {"distribution": "int_uniform", "min": 0, "max": 1e18}}),
        "int range max 1e300": body(
            {"seed": {"distribution": "int_uniform", "min": 0, "max": 1e300}}
        ),
        "lr max 1e308": body(
            {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e308}}
        ),
        "grid of a 0..1e9 range": body(
            {"seed": {"distribution": "int_uniform", "min": 0, "max": 10**9}}, method="grid"
        ),
        "5,000 unknown parameters": body({f"model.p{i}": [1, 2] for i in range(5000)}),
        "seed range 0..2^31-1 (valid)": body(
            {"seed": {"distribution": "int_uniform", "min": 0, "max": 2**31 - 1}}
        ),
        "5,000 listed values (valid)": body(
            {name: [0.001 + i / 2000 for i in range(1000)] for name in FRACTIONS[:5]},
            method="random",
            max_trials=10,
        ),
        "5,001 listed values": body(
            {name: [0.001 + i / 2000 for i in range(1000)] for name in FRACTIONS[:5]}
            | {"seed": [7]},
            method="random",
            max_trials=10,
        ),
        "1,024 rule corners (valid)": body(CORNERS, method="random", max_trials=10),
        "2,048 rule corners (valid)": body(
            CORNERS | {"model.fc_width": [8, 16]}, method="random", max_trials=10
        ),
        "900 kB name": body({"optim.lr": [0.1]}) | {"name": "n" * 900_000},
        "900 kB of one value list": body({"optim.lr": [0.1] * 100_000}),
    }
    raw = {name: json.dumps(b).encode() for name, b in as_json.items()}
    raw["nesting 100,000 deep"] = nested(100_000).encode()
    raw["nesting 500 deep"] = nested(500).encode()
    raw["2 MB body"] = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    return raw


def baseline_body() -> bytes:
    return json.dumps(body({"optim.lr": [0.01, 0.1]}, method="grid")).encode()


class ApiProcess:
    """uvicorn serving the app factory on a free loopback port, state in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        closed = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "SWEEPS_DATABASE_URL": f"sqlite:///{tmp}/sweeps.db",
            "SWEEPS_DATABASE_URL_FILE": str(tmp / "database-url"),
            "SWEEPS_STORAGE_PATH": str(tmp / "tune"),
            "SWEEPS_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
            "SWEEPS_RAY_DASHBOARD_URL": closed,
            "SWEEPS_RAY_AUTH_TOKEN": "unused-" + "y" * 20,
            "SWEEPS_MLFLOW_TRACKING_URI": closed,
            "SWEEPS_API_TOKEN": TOKEN,
            "SWEEPS_RATE_LIMIT": "1000000/minute",
            "SWEEPS_MAX_OPEN_SWEEPS": "100000",
            "SWEEPS_WARM_DRIVERS": "0",
            "SWEEPS_PORT": str(self.port),
        }
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app",
               "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning"]  # fmt: skip
        self.log = open(tmp / "api.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the API did not start; see {tmp / 'api.log'}")
            time.sleep(0.2)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=120,
        )

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def validation_ms(raw: bytes, reps: int) -> float:
    """Median time (ms) to parse and validate ``raw`` as the API does, in this process."""
    from service.api.schemas import SweepCreate

    times = []
    for _ in range(reps):
        t = time.perf_counter()
        try:
            SweepCreate.model_validate(json.loads(raw))
        except ValueError:  # a pydantic ValidationError, or JSON that does not parse
            pass
        except RecursionError:  # nesting past Python's limit: the API answers 400 before this
            pass
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def timed(call: Callable[[], httpx.Response]) -> tuple[float, int]:
    t = time.perf_counter()
    status = call().status_code
    return (time.perf_counter() - t) * 1000, status


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def adversarial(api: ApiProcess, reps: int) -> tuple[dict[str, tuple[int, float, float]], float]:
    """name -> (status, median ms, worst ms); and the baseline's median ms."""
    out: dict[str, tuple[int, float, float]] = {}
    with api.client() as http:
        for raw in bodies().values():  # warm-up: first use of each code path (imports, caches)
            http.post("/sweeps", content=raw)
        plain = baseline_body()
        base = [timed(lambda: http.post("/sweeps", content=plain))[0] for _ in range(reps)]
        for name, raw in bodies().items():
            runs = [timed(lambda raw=raw: http.post("/sweeps", content=raw)) for _ in range(reps)]
            codes = {code for _, code in runs}
            ms = [t for t, _ in runs]
            out[name] = (codes.pop() if len(codes) == 1 else -1, statistics.median(ms), max(ms))
    return out, statistics.median(base)


def healthz_latency(api: ApiProcess, seconds: float, under_load: bool) -> list[float]:
    """/healthz latencies (ms) measured back to back for ``seconds``, with or without a thread
    POSTing every adversarial body in a loop."""
    stop = threading.Event()
    raws = list(bodies().values())

    def load() -> None:
        with api.client() as http:
            while not stop.is_set():
                for raw in raws:
                    http.post("/sweeps", content=raw)

    loader = threading.Thread(target=load, daemon=True)
    if under_load:
        loader.start()
    latencies: list[float] = []
    with httpx.Client(base_url=api.url, timeout=30) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            latencies.append(timed(lambda: http.get("/healthz"))[0])
            time.sleep(0.005)
    stop.set()
    if under_load:
        loader.join(60)
    return latencies


def concurrent_posts(api: ApiProcess) -> tuple[list[float], Counter[int], int]:
    """50 POSTs at once, ten keys five times each: latencies (ms), status codes, distinct ids."""
    run = datetime.now().strftime("%H%M%S%f")
    barrier = threading.Barrier(50)

    def post(i: int) -> tuple[float, int, int]:
        key = i % 10
        raw = json.dumps(body({"optim.lr": [0.01, 0.1 + key]}, name=f"c{key}")).encode()
        with api.client() as http:
            barrier.wait(30)
            t = time.perf_counter()
            resp = http.post("/sweeps", content=raw, headers={"Idempotency-Key": f"{run}-{key}"})
            ms = (time.perf_counter() - t) * 1000
        return ms, resp.status_code, int(resp.json()["id"]) if resp.status_code < 300 else -1

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(post, range(50)))
    return [a[0] for a in answers], Counter(a[1] for a in answers), len({a[2] for a in answers})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        api = ApiProcess(Path(tmp))
        try:
            results, base_ms = adversarial(api, args.reps)
            raws = bodies()
            print("answer: POST to response through the API process (median, worst of the reps);")
            print("validate: json.loads + SweepCreate.model_validate in this process (median)")
            print(f"{'body':32} {'status':>6} {'answer ms':>10} {'worst ms':>9} {'x base':>7} "
                  f"{'validate ms':>12}")  # fmt: skip
            plain = validation_ms(baseline_body(), args.reps)
            print(f"{'valid 2-point grid (baseline)':32} {'201':>6} {base_ms:10.1f} {'':>9} "
                  f"{'':>7} {plain:12.2f}")  # fmt: skip
            worst = worst_validation = 0.0
            for name, (code, med, top) in results.items():
                check = validation_ms(raws[name], args.reps)
                worst, worst_validation = max(worst, top), max(worst_validation, check)
                print(f"{name:32} {code:>6} {med:10.1f} {top:9.1f} {med / base_ms:7.2f} "
                      f"{check:12.2f}")  # fmt: skip
            for what, ms in (("answer", worst), ("validation", worst_validation)):
                verdict = "met" if ms < TARGET_MS else "MISSED"
                print(f"slowest {what}: {ms:.1f} ms (target < {TARGET_MS:.0f} ms): {verdict}")
            idle = healthz_latency(api, args.seconds, under_load=False)
            busy = healthz_latency(api, args.seconds, under_load=True)
            print(
                f"/healthz p50/p99 ms: alone {pct(idle, 0.5):.1f}/{pct(idle, 0.99):.1f} "
                f"({len(idle)} GETs), under adversarial POSTs {pct(busy, 0.5):.1f}/"
                f"{pct(busy, 0.99):.1f} ({len(busy)} GETs); p99 ratio "
                f"{pct(busy, 0.99) / pct(idle, 0.99):.2f}"
            )
            latencies, codes, ids = concurrent_posts(api)
            print(
                f"50 concurrent POSTs (10 keys x 5): p50 {pct(latencies, 0.5):.0f} ms, "
                f"p99 {pct(latencies, 0.99):.0f} ms; status codes {dict(codes)}; {ids} sweeps"
            )
            ok = codes == Counter({201: 10, 200: 40}) and ids == 10
            print("exactly ten sweeps and forty replays:", "yes" if ok else "NO")
        finally:
            api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
