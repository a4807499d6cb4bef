"""``sweeps``: start the stack, submit sweeps and follow them from the terminal.

Client commands talk to the API over HTTP (``--url`` and ``--token``, defaulting to the
settings' ``public_url`` and ``api_token``); ``up`` and ``demo`` start the embedded stack and
keep it up until Ctrl-C (or SIGTERM, SIGHUP), printing the links of each sweep that ends.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.cli import lecture, report
from service.cli.client import ApiError, SweepsClient
from service.cli.links import EndedSweeps, show_links
from service.config import STATE_DIR, Settings, load_settings
from workers.analysis import SEED, SweepResults, TrialResult, effects, settings_of
from workers.events import FINAL_SWEEP_STATUSES, FINAL_TRIAL_STATUSES
from workers.spec import PARAMETERS, varied_keys

if TYPE_CHECKING:
    from service.cli.stack import Stack

WATCH_WAIT_S = 30.0
"""How long ``sweeps watch`` lets the API hold each request while nothing changes."""
TRACKED_WAIT_S = 30.0
"""How long ``sweeps watch`` waits, once the sweep ended, for MLflow to have all of it."""
FOLLOW_EVERY_S = 5.0
"""How often ``sweeps up`` asks the API for sweeps that ended, to print their links."""
console = Console()


def main(argv: list[str] | None = None) -> int:
    """Run the ``sweeps`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except ApiError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    except KeyboardInterrupt:
        return 130


def _say(text: str) -> None:
    """Print ``text``, or nothing where its reader is gone (``make run | tee run.log``, whose
    Ctrl-C stops ``tee`` first: EPIPE, which rich answers with SystemExit; a closed terminal:
    EIO)."""
    with contextlib.suppress(SystemExit, OSError):
        console.print(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweeps", description=__doc__)
    parser.add_argument("--url", help="API base URL (default: SWEEPS_PUBLIC_URL)")
    parser.add_argument("--token", help="API token (default: SWEEPS_API_TOKEN)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    cmd = sub.add_parser("up", help="start MLflow, a Ray head and the API on loopback")
    cmd.set_defaults(run=_up)
    cmd = sub.add_parser("demo", help="start the stack, run one sweep file to its end, stay up")
    cmd.add_argument("file", type=Path)
    cmd.add_argument("--exit", action="store_true", help="stop the stack once the sweep ended")
    cmd.set_defaults(run=_demo)
    cmd = sub.add_parser("submit", help="submit a sweep file (YAML)")
    cmd.add_argument("file", type=Path)
    cmd.add_argument("--idempotency-key")
    cmd.add_argument("--watch", action="store_true", help="then follow it to its end")
    cmd.set_defaults(run=_submit)
    cmd = sub.add_parser("list", help="list sweeps, newest first")
    cmd.add_argument("--status")
    cmd.add_argument("--limit", type=int, default=20)
    cmd.add_argument("--offset", type=int, default=0)
    cmd.set_defaults(run=_list)
    for name, run, text in [
        ("status", _status, "a sweep's status, trials and best trial"),
        ("watch", _watch, "follow a sweep live until it ends"),
        ("cancel", _cancel, "cancel a sweep"),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("sweep_id", type=int)
        cmd.set_defaults(run=run)
    report.add_parser(sub, _client)
    lecture.add_parser(sub, _client, _embedded_stack)
    return parser


def _client(args: argparse.Namespace) -> SweepsClient:
    settings = load_settings()
    token = args.token or (settings.api_token.get_secret_value() if settings.api_token else None)
    return SweepsClient(args.url or settings.api_url, token)


def _read_spec(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of sweep settings at the top level")
    return data


def _submit(args: argparse.Namespace) -> int:
    client = _client(args)
    sweep = client.submit(_read_spec(args.file), args.idempotency_key)
    console.print(f"sweep [bold]{sweep['id']}[/] ({sweep['name']}): {sweep['links']['self']}")
    if sweep["links"].get("mlflow_experiment"):
        console.print(f"MLflow: {sweep['links']['mlflow_experiment']}")
    return watch(client, sweep["id"]) if args.watch else 0


def _list(args: argparse.Namespace) -> int:
    page = _client(args).list(args.status, args.limit, args.offset)
    table = Table("id", "name", "status", "trials", "created", "message")
    for s in page["data"]:
        table.add_row(
            str(s["id"]), s["name"], s["status"], str(s["planned_trials"]),
            s["created_at"][:19], s["message"][:60],
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(page['data'])} of {page['count']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    show(client.get(args.sweep_id), client.trials(args.sweep_id)["data"])
    return 0


def _watch(args: argparse.Namespace) -> int:
    return watch(_client(args), args.sweep_id)


def _cancel(args: argparse.Namespace) -> int:
    answer = _client(args).cancel(args.sweep_id)
    console.print(f"sweep {answer['id']}: {answer['status']} ({answer['message']})")
    return 0


def show(sweep: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """Print a sweep, its trials and its best trial."""
    console.print(f"[bold]sweep {sweep['id']}[/] {sweep['name']}: {sweep['status']}")
    if sweep["message"]:
        console.print(f"  {sweep['message']}")
    metric = sweep["spec"]["metric"]["name"]
    keys = varied_keys(PARAMETERS.validate_python(sweep["spec"]["parameters"]))
    table = Table("#", "status", "epochs", metric, "varied settings")
    for t in trials:
        value = t["last_metrics"].get(metric)
        shown = "" if value is None else f"{value:.4f}"
        row = [str(t["number"]), t["status"], str(t["epochs_done"]), shown]
        table.add_row(*row, _params(t["params"], keys))
    console.print(table)
    show_effects(sweep, trials)
    show_best(sweep, keys)


HELPED_SHOWN = 6
"""How many settings the summary names, most influential first."""


def show_effects(sweep: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """Print which value of each varied setting helped: the best and worst mean final metric
    over the trials that had it, most influential setting first (the seed is no setting one
    picks: left out)."""
    metric = sweep["spec"]["metric"]
    results = SweepResults(
        sweep["name"], metric["name"], metric["goal"], settings_of(sweep["spec"]["parameters"]),
        [
            TrialResult(t["number"], "", t["status"], t["params"],
                        [(t["epochs_done"], t["last_metrics"])] if t["last_metrics"] else [])
            for t in trials
        ],
    )  # fmt: skip
    found = [e for e in effects(results) if e.influence > 0 and e.key != SEED][:HELPED_SHOWN]
    if not found:
        return
    console.print(
        f"what helped (mean final {metric['name']} of the trials with each value; influence: "
        "the share of its variance the setting explains):",
        soft_wrap=True,
    )
    for e in found:
        console.print(
            f"  {e.key}: best {e.best} ({e.best_mean:.3f}), worst {e.worst} "
            f"({e.worst_mean:.3f}); influence {e.influence:.2f}",
            soft_wrap=True,
        )


def _params(params: dict[str, Any], keys: list[str]) -> str:
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={short(params[k])}" for k in keys if k in params)


def show_best(sweep: dict[str, Any], keys: list[str]) -> None:
    """Print the best trial and where to compare the sweep in MLflow."""
    best = sweep.get("best_trial")
    if best:
        console.print(
            f"best trial #{best['number']}: {best['metric']}={best['value']:.4f} "
            f"at epoch {best['epoch']} with {_params(best['params'], keys)}"
        )
    behind = sweep.get("mlflow_pending", 0)
    if behind:
        error = sweep.get("mlflow_error")
        console.print(f"MLflow is behind by {behind} writes" + (f" ({error})" if error else ""))
    show_links(console, sweep["links"])


def watch(client: SweepsClient, sweep_id: int, *, tracked_wait_s: float = TRACKED_WAIT_S) -> int:
    """Show a live progress bar of a sweep's trials until it ends; 0 when it completed.

    Each request is a long poll on the last answer's version: the bar moves as soon as the
    sweep does, and nothing is asked while nothing changes. Once it ended, waits up to
    ``tracked_wait_s`` for MLflow to have all of it.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("starting", total=None)
        version = None
        while True:
            sweep = client.get(sweep_id, wait=WATCH_WAIT_S if version else 0.0, version=version)
            version = sweep["version"]
            counts = sweep["trial_counts"]
            done = sum(counts.get(s, 0) for s in FINAL_TRIAL_STATUSES)
            total = max(sweep["planned_trials"], counts["total"])
            best = sweep.get("best_trial")
            best_text = f" best {best['metric']}={best['value']:.4f}" if best else ""
            running = counts.get("running", 0)
            text = f"sweep {sweep_id} {sweep['status']}: {running} running{best_text}"
            bar.update(task, description=text, completed=done, total=total)
            if sweep["status"] in FINAL_SWEEP_STATUSES:
                break
    sweep = _until_tracked(client, sweep, tracked_wait_s)
    show(sweep, client.trials(sweep_id)["data"])
    return 0 if sweep["status"] == "completed" else 1


def _until_tracked(client: SweepsClient, sweep: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """The ended sweep once MLflow has all of it, or as it is after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while sweep.get("mlflow_pending") and (left := deadline - time.monotonic()) > 0:
        sweep = client.get(sweep["id"], wait=min(5.0, left), version=sweep["version"])
    return sweep


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop ``sweeps up`` and ``sweeps demo`` and, with them, the whole stack."""


@contextlib.contextmanager
def _embedded_stack() -> Iterator[tuple[Stack, Settings]]:
    """Start the embedded stack; yields it and its settings, and stops all of it on the way out.

    Each of :data:`STOP_SIGNALS` raises KeyboardInterrupt, once: from then on, and while the
    stack stops, they are ignored, so that a second Ctrl-C cannot orphan half of the stack. A
    signal this process was started ignoring (``nohup``'s SIGHUP) stays ignored.
    """
    from service.cli.stack import Stack

    stack = Stack(load_settings())
    previous = {
        sig: signal.signal(sig, _interrupt)
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield stack, stack.start()
    finally:
        _ignore_stop_signals()
        try:
            stack.stop()  # before any write: stdout may be a dead pipe or a hung-up terminal
            _say("the stack stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _ignore_stop_signals()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _up(args: argparse.Namespace) -> int:
    console.print(f"starting MLflow, Ray and the API (logs under {STATE_DIR}/logs)...")
    try:
        with _embedded_stack() as (stack, settings):
            _show_stack(stack, settings)
            return _serve(stack, _stack_client(args, settings))
    except KeyboardInterrupt:
        return 0


def _demo(args: argparse.Namespace) -> int:
    spec = _read_spec(args.file)
    console.print(f"starting MLflow, Ray and the API (logs under {STATE_DIR}/logs)...")
    code = 130  # interrupted before the sweep ended
    try:
        with _embedded_stack() as (stack, settings):
            client = _stack_client(args, settings)
            sweep = client.submit(spec)
            console.print(f"sweep {sweep['id']} submitted: {sweep['links']['self']}")
            code = watch(client, sweep["id"])
            if args.exit:
                return code
            _show_stack(stack, settings)
            return _serve(stack, client) or code
    except KeyboardInterrupt:
        return code


def _stack_client(args: argparse.Namespace, settings: Settings) -> SweepsClient:
    token = args.token or (settings.api_token.get_secret_value() if settings.api_token else None)
    return SweepsClient(args.url or settings.api_url, token)


def _show_stack(stack: Stack, settings: Settings) -> None:
    console.print(f"API     {settings.api_url}  (docs: {settings.api_url}/docs)")
    console.print(f"MLflow  {settings.mlflow_link_base}")
    console.print(f"Ray     {settings.ray_dashboard_url}  (logs in {stack.state}/logs)")
    console.print("The stack stays up: Ctrl-C stops it.")


def _serve(stack: Stack, client: SweepsClient) -> int:
    """Keep the stack up, printing the links of each sweep that ends, until a stop signal
    (KeyboardInterrupt) or until a process of the stack exits (then 1)."""
    ended = EndedSweeps(client, console)
    next_poll = 0.0
    while all(p.proc.poll() is None for p in stack.procs):
        if time.monotonic() >= next_poll:
            ended.poll()
            next_poll = time.monotonic() + FOLLOW_EVERY_S
        time.sleep(0.5)
    console.print("[red]a process of the stack exited[/]; stopping")
    return 1


if __name__ == "__main__":
    sys.exit(main())
