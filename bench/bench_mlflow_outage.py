"""Benchmark: a sweep's wall time with MLflow down for a minute, against MLflow up.

The same sweep (8 trials: a grid of 4 learning rates x 2 momenta, an MLP on digits, 2 trials at
a time) through the REST API of the embedded stack (:class:`service.cli.stack.Stack`: a real
API process, Ray head and MLflow server), in rounds of two runs in a random order:

- ``up``: MLflow answers throughout;
- ``outage``: MLflow is stopped just before the POST and started again (same port, same store)
  ``--outage`` seconds (60) later.

Each run's wall time runs from the POST to the sweep's final status (the long poll that sees
it): its training, which must never wait for MLflow. The outage run also reports how long after
MLflow's return MLflow held everything (``mlflow_pending`` 0). Target: outage / up <= 1.2.
Run: ``python bench/bench_mlflow_outage.py [--rounds R] [--outage S]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_service_overhead import FINAL, embedded_stack, settle, sweep_body

TARGET = 1.2
TIMEOUT_S = 900


def stop_mlflow(stack: Any) -> None:
    """Stop the stack's MLflow server (and a restarted one), as a crash would."""
    from service.cli.stack import kill_group

    for started in [p for p in stack.procs if p.name == "mlflow"]:
        kill_group(started.proc, grace=1.0)
        stack.procs.remove(started)


def start_mlflow(stack: Any) -> None:
    """MLflow again, on the same port and store."""
    from service.cli.stack import MLFLOW_ENV, Started, mlflow_server_command, wait_http

    root, uri = stack.state / "mlflow", stack.settings.mlflow_tracking_uri
    port = int(uri.rsplit(":", 1)[1])
    log = stack.state / "logs" / "mlflow.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            mlflow_server_command(root, port),
            env={**os.environ, **MLFLOW_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.procs.append(Started("mlflow", proc, log))
    wait_http(f"{uri}/health", proc, 90, "mlflow", log)


def run(client: Any, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """POST the sweep and follow it with long polls until final; wall seconds and the sweep."""
    start = time.perf_counter()
    sweep = client.submit(body)
    while sweep["status"] not in FINAL:
        if time.perf_counter() - start > TIMEOUT_S:
            raise RuntimeError(f"sweep {sweep['id']} not final after {TIMEOUT_S} s")
        sweep = client.get(sweep["id"], wait=60.0, version=sweep["version"])
    wall = time.perf_counter() - start
    if sweep["status"] != "completed" or sweep["trial_counts"]["failed"]:
        raise RuntimeError(f"sweep {sweep['id']} ended {sweep['status']}: {sweep['message']}")
    return wall, sweep


def tracked_after(client: Any, sweep_id: int, since: float) -> float:
    """Seconds from ``since`` until MLflow holds everything of the sweep."""
    while client.get(sweep_id)["mlflow_pending"]:
        if time.perf_counter() - since > TIMEOUT_S:
            raise RuntimeError(f"MLflow still behind on sweep {sweep_id} after {TIMEOUT_S} s")
        time.sleep(0.25)
    return time.perf_counter() - since


def outage_run(client: Any, stack: Any, body: dict[str, Any], outage: float) -> tuple[float, float]:
    """The sweep with MLflow down from just before its POST for ``outage`` seconds; its wall
    time, and how long after MLflow's return MLflow had it all."""
    stop_mlflow(stack)
    down = time.perf_counter()
    wall, sweep = run(client, body)
    time.sleep(max(0.0, outage - (time.perf_counter() - down)))
    start_mlflow(stack)
    return wall, tracked_after(client, sweep["id"], time.perf_counter())


def main() -> None:
    """Parse the options, run the rounds, print the table; always stop the stack."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after 1 warm-up)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds MLflow is down")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the stack is stopped
    print(
        f"cpus={os.cpu_count()} load_average_1min={os.getloadavg()[0]:.2f} trials=8 "
        f"epochs={args.epochs} concurrency=2 outage={args.outage:.0f} s "
        f"rounds=1 warm-up + {args.rounds}"
    )
    from service.cli.client import SweepsClient

    body = sweep_body(args.epochs, 64, 2) | {"name": "bench-outage"}
    walls: dict[str, list[float]] = {"up": [], "outage": []}
    catch_up: list[float] = []
    root = Path(tempfile.mkdtemp(prefix="bout-", dir="/tmp"))  # short: Ray's socket paths
    try:
        with embedded_stack(root, warm_drivers=1) as stack:
            settings = stack.settings
            client = SweepsClient(settings.api_url, settings.api_token.get_secret_value())
            for r in range(1 + args.rounds):
                order = random.sample(["up", "outage"], 2)
                seen = {}
                for mode in order:
                    settle(client)
                    if mode == "up":
                        seen[mode] = run(client, body)[0]
                    else:
                        seen[mode], after = outage_run(client, stack, body, args.outage)
                    if r:
                        walls[mode].append(seen[mode])
                        catch_up += [after] if mode == "outage" else []
                label = "warm-up" if r == 0 else "measured"
                print(
                    f"round {r} ({label}): " + ", ".join(f"{m} {s:.2f} s" for m, s in seen.items())
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    up, out = statistics.median(walls["up"]), statistics.median(walls["outage"])
    paired = [o / u for o, u in zip(walls["outage"], walls["up"], strict=True)]
    verdict = "ok" if out / up <= TARGET else "MISSED"
    print(f"up      median {up:.2f} s  runs " + " ".join(f"{w:.2f}" for w in walls["up"]))
    print(f"outage  median {out:.2f} s  runs " + " ".join(f"{w:.2f}" for w in walls["outage"]))
    print(f"outage / up  {out / up:.3f}  target <= {TARGET} {verdict}")
    print("outage / up round by round " + " ".join(f"{p:.3f}" for p in paired))
    print(f"MLflow complete after its return: median {statistics.median(catch_up):.2f} s")
    print(f"load_average_1min={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
