"""The fork server and its launcher (workers.warm.forks) with real processes: what reaches the
child, what its launcher sees, and that a child never outlives its launcher or takes the
zygote down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ZYGOTE = """
import os, sys, time
from pathlib import Path
from workers.warm.forks import serve

def run(argv):
    if argv[0] == "exit":
        print("child", os.getpid(), os.getppid(), os.environ.get("MARK"), os.getcwd(), flush=True)
        return int(argv[1])
    if argv[0] == "sleep":
        print("sleeping", os.getpid(), flush=True)
        time.sleep(600)
    raise RuntimeError("the child crashed")

sys.exit(serve(Path(sys.argv[1]), run, title=lambda args: ["python", "-m", "fake.job", *args]))
"""
LAUNCHER = (
    "import sys; from workers.warm.forks import launch; "
    "code = launch(sys.argv[1], sys.argv[2:]); sys.exit(99 if code is None else code)"
)
NO_ZYGOTE = 99


def _wait(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "z.sock"


def start_zygote(sock: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(sock)])
    _wait(sock.exists)
    return proc


@pytest.fixture
def zygote(sock: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_zygote(sock)
    yield proc
    proc.kill()
    proc.wait()


def launcher(sock: Path, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(sock), *args],
        stdout=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_the_child_has_the_launchers_environment_streams_and_exit_status(
    zygote: subprocess.Popen[bytes], sock: Path, tmp_path: Path
) -> None:
    proc = launcher(sock, "exit", "7", env={**os.environ, "MARK": "from-launcher"}, cwd=tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 7
    _, pid, ppid, mark, cwd = out.split()
    assert int(ppid) == zygote.pid and int(pid) not in (proc.pid, zygote.pid)
    assert mark == "from-launcher" and cwd == str(tmp_path)


def test_the_child_shows_its_own_command_line(zygote: subprocess.Popen[bytes], sock: Path) -> None:
    proc = launcher(sock, "sleep")
    assert proc.stdout is not None
    pid = int(proc.stdout.readline().split()[1])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert cmdline == [b"python", b"-m", b"fake.job", b"sleep"]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_child_ends_with_its_launcher(
    zygote: subprocess.Popen[bytes], sock: Path, sig: signal.Signals
) -> None:
    proc = launcher(sock, "sleep")
    assert proc.stdout is not None
    pid = int(proc.stdout.readline().split()[1])
    os.kill(proc.pid, sig)  # SIGTERM is passed on; SIGKILL leaves the child alone to notice
    _wait(lambda: not alive(pid), timeout=10)
    proc.wait(10)
    assert zygote.poll() is None


def test_a_frozen_child_is_killed_when_its_launcher_is_stopped(
    zygote: subprocess.Popen[bytes], sock: Path
) -> None:
    proc = launcher(sock, "sleep")
    assert proc.stdout is not None
    pid = int(proc.stdout.readline().split()[1])
    os.kill(pid, signal.SIGSTOP)  # alive, silent: as the fault tests freeze a driver
    proc.terminate()
    _wait(lambda: not alive(pid), timeout=10)
    proc.wait(10)


def test_a_crashing_child_fails_alone_and_the_zygote_serves_on(
    zygote: subprocess.Popen[bytes], sock: Path
) -> None:
    crashed = launcher(sock, "crash")
    crashed.communicate(timeout=30)
    assert crashed.returncode == 1
    again = launcher(sock, "exit", "0")
    again.communicate(timeout=30)
    assert again.returncode == 0 and zygote.poll() is None


def test_without_a_zygote_nothing_is_started(sock: Path) -> None:
    proc = launcher(sock, "exit", "0")
    proc.communicate(timeout=30)
    assert proc.returncode == NO_ZYGOTE
    sock.write_text("")  # a stale file where the socket was: refused the same way
    proc = launcher(sock, "exit", "0")
    proc.communicate(timeout=30)
    assert proc.returncode == NO_ZYGOTE


def test_a_newer_zygote_takes_the_socket_and_the_older_exits(sock: Path) -> None:
    old = start_zygote(sock)
    inode = sock.stat().st_ino
    new = start_zygote_replacing(sock, inode)
    try:
        assert old.wait(20) == 0
        proc = launcher(sock, "exit", "3")
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 3 and int(out.split()[2]) == new.pid
    finally:
        for p in (old, new):
            p.kill()
            p.wait()


def start_zygote_replacing(sock: Path, inode: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(sock)])
    _wait(lambda: sock.exists() and sock.stat().st_ino != inode)
    return proc


def _entry(path: Path) -> str | None:
    """What is at ``path``: a link's target, a file's text, or None."""
    if path.is_symlink():
        return str(path.readlink())
    return path.read_text() if path.exists() else None


@pytest.mark.parametrize("unsafe", ["file", "link", "open directory"])
def test_a_zygote_listens_in_place_of_nothing_but_an_older_socket(
    sock: Path, tmp_path: Path, unsafe: str
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    if unsafe == "file":
        sock.write_text("a file")
    elif unsafe == "link":
        sock.symlink_to(victim)
    else:
        tmp_path.chmod(0o777)
    before = _entry(sock)
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(sock)], stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=20)  # a zygote that listens runs on
    finally:
        proc.kill()
    assert proc.returncode == 1 and b"UnsafePathError" in err
    assert _entry(sock) == before and victim.read_text() == "untouched"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


@pytest.mark.parametrize("unsafe", ["link", "open directory", "another user's socket"])
def test_a_launcher_trusts_only_a_socket_of_its_user_in_a_private_directory(
    zygote: subprocess.Popen[bytes], sock: Path, tmp_path: Path, unsafe: str
) -> None:
    path, refused = sock, sock
    if unsafe == "link":  # to a zygote that would answer
        path = refused = tmp_path / "elsewhere" / "z.sock"
        path.parent.mkdir(mode=0o700)
        path.symlink_to(sock)
    elif unsafe == "open directory":
        tmp_path.chmod(0o777)
        refused = tmp_path
    else:
        try:
            os.chown(sock, 65534, 65534)
        except PermissionError:
            pytest.skip("only root may give a file to another user")
    proc = launcher(path, "exit", "0", stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == NO_ZYGOTE and f"launcher: no zygote: {refused} " in err
