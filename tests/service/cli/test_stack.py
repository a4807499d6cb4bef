"""The embedded stack of ``sweeps up`` and ``sweeps demo``: every port on loopback, the links
printed once a sweep ended answer while the stack stays up, and nothing is left running once a
signal stops it.

Each test starts the real stack (MLflow, a Ray head with its standby sweep job, the API) as
``sweeps up`` does, on free ports with its state in the test's directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pty
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service.cli.stack import Stack, StackError, free_port
from service.config import Settings
from workers.errors import UnsafePathError

SWEEPS = Path(sys.executable).parent / "sweeps"
START_TIMEOUT_S = 300.0
"""Until the API answers and its standby sweep job is ready (all of it on two slow cores)."""
STOP_TIMEOUT_S = 90.0
"""Until ``sweeps up`` has exited once signalled (the stack's stop grace periods, and some)."""
PRINTED_LINK = re.compile(r"(?P<label>[\w. ]+): (?P<url>https?://[^\s)]+)")
DEMO_TIMEOUT_S = 600.0
"""Until ``sweeps demo`` has started the stack, run the tour (two minutes alone), and said so."""
TOUR = Path(__file__).parents[3] / "examples" / "toolbox-tour.yaml"


def test_stack_refuses_to_serve_the_api_beyond_loopback(tmp_path: Path) -> None:
    settings = Settings(host="0.0.0.0", api_token=secrets.token_hex(16))
    stack = Stack(settings, state_dir=tmp_path)
    with pytest.raises(StackError, match=r"SWEEPS_HOST=0\.0\.0\.0"):
        stack.start()
    assert stack.procs == []


def test_stack_writes_no_ray_token_through_a_link_and_starts_nothing(tmp_path: Path) -> None:
    victim = tmp_path / "victim"  # missing: a write through the link would create it
    stack = Stack(Settings(api_token=secrets.token_hex(16)), state_dir=tmp_path / "state")
    stack.token_file.parent.mkdir(parents=True, mode=0o700)
    stack.token_file.symlink_to(victim)
    with pytest.raises(UnsafePathError, match="is a symbolic link, not a secret file"):
        stack.start()
    assert stack.procs == [] and not victim.exists()


@pytest.mark.slow
@pytest.mark.parametrize("output", ["pipe", "terminal"])
def test_up_listens_on_loopback_only_and_stops_everything_when_its_output_went_first(
    tmp_path: Path, output: str
) -> None:
    """``make run | tee run.log``, then Ctrl-C: ``tee`` dies first (writes fail with EPIPE); or
    the terminal closes, then SIGHUP (writes fail with EIO). The stack stops all the same
    (SIGTERM, with the output alive: the tour's test)."""
    with _sweeps_up(tmp_path, output=output) as up:
        tree = _stack_processes(up, str(tmp_path))
        exposed = [
            f"{_describe(proc)} on {ip}:{port}"
            for proc in tree
            for ip, port in _bound_addresses(proc)
            if not _is_loopback(ip)
        ]
        assert not exposed, "the stack listens beyond loopback:\n" + "\n".join(exposed)
        served = _worker_series(tree)
        assert not served, f"Ray keeps per-process metrics series (memory without bound): {served}"
        if up.stdout is not None:
            up.stdout.close()  # tee is gone
        else:
            os.close(up.terminal)  # type: ignore[attr-defined]
        sig = signal.SIGINT if output == "pipe" else signal.SIGHUP
        _stop_and_check(up, tree, sig, str(tmp_path))


@pytest.mark.slow
def test_the_tour_shows_the_toolbox_working_prints_links_that_answer_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """``make run``: the toolbox tour's best trial reaches 0.95, the summary says what helped."""
    (tmp_path / "tour.yaml").write_text(TOUR.read_text())
    token = secrets.token_hex(16)
    with _sweeps_up(tmp_path, ("demo", "tour.yaml"), token) as demo:
        out = _wait_for_line(demo, tmp_path / "up.log", "The stack stays up")
        best = re.search(r"best trial #\d+: val_accuracy=(?P<value>[\d.]+)", out)
        assert best and float(best["value"]) >= 0.95, out[-3000:]
        helped = out[out.index("what helped") :].splitlines()[1:4]
        assert all(re.match(r"\s+[\w.]+: best .+, worst .+; influence [\d.]+", h) for h in helped)
        links = _printed_links(out)
        assert {"docs", "compare in MLflow", "sweep run", "curves.png", "summary.md"} <= set(links)
        for what, url in links.items():
            answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
            # demo prints them once MLflow has the whole sweep, pictures included
            assert answer.status_code == 200, f"{what}: {url} answered {answer.status_code}"
        assert demo.poll() is None, "`sweeps demo` exited after the sweep"
        _stop_and_check(demo, _stack_processes(demo, str(tmp_path)), signal.SIGTERM, str(tmp_path))
    assert demo.returncode == 0, out


def _stop_and_check(
    proc: subprocess.Popen[bytes], tree: list[psutil.Process], sig: signal.Signals, marker: str
) -> None:
    """Send ``sig``; the command must exit in time with nothing it started left running."""
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sweeps` still runs {STOP_TIMEOUT_S:.0f} s after {sig.name}")
    left = [p for p in tree if _alive(p)] + [p for p in _naming(marker) if p not in tree]
    assert not left, f"alive after {sig.name}: " + ", ".join(map(_describe, left))


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str) -> str:
    """The command's output once it printed ``text``."""
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while time.monotonic() < deadline:
        out = log.read_text(errors="replace")
        if text in out:
            return out
        if proc.poll() is not None:
            pytest.fail(f"`sweeps` exited ({proc.returncode}):\n{out[-3000:]}")
        time.sleep(1)
    pytest.fail(f"no {text!r} after {DEMO_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def _printed_links(out: str) -> dict[str, str]:
    """What the output links to, by label: ``label: URL`` (the API's ``(docs: URL)`` too)."""
    return {m["label"].strip(): m["url"] for m in PRINTED_LINK.finditer(out)}


@contextlib.contextmanager
def _sweeps_up(
    root: Path, args: tuple[str, ...] = ("up",), token: str | None = None, output: str = "log"
) -> Iterator[subprocess.Popen[bytes]]:
    """``sweeps up`` (or ``sweeps *args``) started in ``root`` (its state under
    ``root/.sweeps``) on free ports with API token ``token``, once its API is ready and its
    standby sweep job too; SIGKILLed with all it started if still running at the end. Its
    output goes to ``root/up.log``; with ``output`` "pipe" its standard output goes to a pipe,
    with "terminal" to a pseudo-terminal whose master end is ``proc.terminal``."""
    token = token or secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEPS_", "RAY_"))}
    env |= {
        "SWEEPS_PORT": str(port),
        "SWEEPS_API_TOKEN": token,
        "SWEEPS_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "SWEEPS_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "SWEEPS_RAY_DASHBOARD_URL": f"http://127.0.0.1:{free_port()}",
        "SWEEPS_WARM_DRIVERS": "1",
    }
    log = root / "up.log"
    master, slave = pty.openpty() if output == "terminal" else (-1, -1)
    stdout = {"log": None, "pipe": subprocess.PIPE, "terminal": slave}[output]
    with open(log, "wb") as out, _default_dispositions():
        up = subprocess.Popen(
            [str(SWEEPS), *args],
            cwd=root,
            env=env,
            stdout=out if stdout is None else stdout,
            stderr=out if stdout is not None else subprocess.STDOUT,
        )
    if output == "terminal":
        os.close(slave)
        up.terminal = master  # type: ignore[attr-defined]
    tree: list[psutil.Process] = []
    try:
        _wait_warm(up, f"http://127.0.0.1:{port}", token, log)
        tree = _stack_processes(up, str(root))
        yield up
    finally:
        if up.poll() is None:
            tree = tree or _stack_processes(up, str(root))
            up.kill()
            up.wait()
        for proc in [*tree, *_naming(str(root))]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


@contextlib.contextmanager
def _default_dispositions() -> Iterator[None]:
    """Signals this process ignores (under ``nohup``, SIGHUP) at their default for a child
    started meanwhile: ignored ones are inherited across exec, and would defeat the test."""
    ignored = [s for s in (signal.SIGHUP, signal.SIGINT) if signal.getsignal(s) is signal.SIG_IGN]
    for sig in ignored:
        signal.signal(sig, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


def _wait_warm(up: subprocess.Popen[bytes], url: str, token: str, log: Path) -> None:
    """Wait until the API is ready with its standby sweep job (so Ray runs workers and a job)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    warm: object = None
    while time.monotonic() < deadline:
        if up.poll() is not None:
            pytest.fail(f"`sweeps up` exited ({up.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
            warm = answer.json().get("warm_drivers") if answer.status_code == 200 else None
            if isinstance(warm, dict) and warm.get("ready", 0) >= 1:
                return
        time.sleep(1)
    seen = log.read_text()[-3000:]
    pytest.fail(f"the stack was not warm after {START_TIMEOUT_S:.0f} s ({warm}):\n{seen}")


def _stack_processes(up: subprocess.Popen[bytes], marker: str) -> list[psutil.Process]:
    """``sweeps up``, its descendants, and any process naming ``marker`` (its directory)."""
    root = psutil.Process(up.pid)
    tree = [root, *root.children(recursive=True)]
    return tree + [p for p in _naming(marker) if p not in tree]


def _naming(marker: str) -> list[psutil.Process]:
    """Live processes, but this one, whose command line or environment names ``marker``."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid == os.getpid() or not _alive(proc):
                continue
            seen = " ".join(proc.cmdline()) + " ".join(proc.environ().values())
            if marker in seen:
                found.append(proc)
    return found


def _bound_addresses(proc: psutil.Process) -> list[tuple[str, int]]:
    """Where ``proc`` accepts connections or datagrams: listening TCP and unconnected UDP."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return [
            (c.laddr[0], c.laddr[1])
            for c in proc.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
        ]
    return []


def _worker_series(tree: list[psutil.Process]) -> list[str]:
    """The processes of ``tree`` whose ``/metrics`` page serves a series per Ray worker process
    name, with the first: a Ray dashboard agent collecting metrics keeps one per name it ever saw
    (``ray_component_rss_mb{Component="ray::..."}``), every sweep's job supervisor a name of
    its own. (The dashboard's series of itself are a fixed few.)"""
    found = []
    for proc in tree:
        for port in {port for _, port in _bound_addresses(proc)}:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except httpx.HTTPError:
                continue
            series = [s for s in page.text.splitlines() if 'Component="ray::' in s]
            if series:
                found.append(f"{_describe(proc)} on port {port}: {series[0]}")
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket's IPv4 loopback
    return address.is_loopback


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} ({' '.join(proc.cmdline())[:160] or proc.name()})"
    except psutil.Error:
        return f"{proc.pid} (gone)"
