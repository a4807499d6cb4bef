"""Fork servers ("zygotes") and their launchers: a process that imported what a kind of process
needs once forks one child per request, in place of a Python started and importing it again.

Standard library only (and :mod:`workers.private_files`), so a launcher starts in milliseconds.
A launcher (:func:`launch`) connects to the zygote's Unix socket and sends its arguments,
environment, working directory and standard streams (``SCM_RIGHTS``). The zygote (:func:`serve`)
forks a child that takes them all, starts a session of its own, names itself as the cold-started
process would be named in ``/proc`` (``ps``, and whoever looks a process up by its command
line), runs the zygote's ``run(argv)`` and reports its exit status to the launcher, which exits
with it. The launcher passes stop signals (SIGTERM, SIGINT, SIGHUP) on to the child and SIGKILLs
it :data:`KILL_AFTER_S` later if it still runs; a child whose launcher dies kills itself. So the
child is, to whoever started the launcher (Ray), that process: same pid to signal through, same
log, same lifetime. The zygote's socket is a file in a directory only this user may change
(checked on both sides), and it serves only this user (``SO_PEERCRED``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from workers.errors import UnsafePathError
from workers.private_files import bind_socket, check_socket

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 2.0
FORK_TIMEOUT_S = 10.0
"""How long the zygote may take to answer with the child's pid."""
KILL_AFTER_S = 2.0
"""After a stop signal the child is SIGKILLed this much later if it still runs (Ray's job stop
SIGKILLs the job's process group 3 s after its SIGTERM)."""
CHECK_EVERY_S = 2.0
"""How often an idle zygote checks that its socket path is still its own."""
MAX_REQUEST = 1 << 20


def launch(path: str | None, argv: list[str]) -> int | None:
    """Run ``argv`` as a child of the zygote listening at ``path``; its exit status, or None
    (nothing started) when no zygote answers there."""
    conn = _connect(path) if path else None
    if conn is None:
        return None
    try:
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        conn.settimeout(FORK_TIMEOUT_S)
        reader = conn.makefile("rb")
        pid = int(json.loads(reader.readline())["pid"])
    except (OSError, ValueError, KeyError) as err:
        print(f"launcher: the zygote at {path} forked nothing ({err})", file=sys.stderr)
        conn.close()
        return None
    conn.settimeout(None)
    _relay_stop_signals(pid)
    line = reader.readline()  # the child's exit status; EOF when it died without one
    try:
        return int(json.loads(line)["exit"])
    except (ValueError, KeyError):
        print(f"launcher: child {pid} ended without an exit status", file=sys.stderr)
        return 1


def _connect(path: str) -> socket.socket | None:
    """A connection to the zygote at ``path``; None where none answers, or where ``path`` is
    not a socket of this user's in a private directory (a link, a file, another uid's)."""
    try:
        check_socket(Path(path))
    except FileNotFoundError:
        return None
    except UnsafePathError as err:
        print(f"launcher: no zygote: {err}", file=sys.stderr)
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    return conn


def _relay_stop_signals(pid: int) -> None:
    """Pass a stop signal on to the child, and SIGKILL it ``KILL_AFTER_S`` later if it still
    runs: a child frozen by SIGSTOP must end with its launcher, as it would in its group."""

    def relay(signum: int, _frame: object) -> None:
        for sig in (signum, signal.SIGCONT):
            _kill(pid, sig)
        timer = threading.Timer(KILL_AFTER_S, _kill, (pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, relay)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


Title = Callable[[list[str]], list[str]] | None
"""The command line a child shows in ``/proc``, from its arguments (None: the zygote's)."""


class Tender(Protocol):
    """Told of each child a zygote forks, and called between requests (at least every
    :data:`CHECK_EVERY_S`): whatever the zygote keeps for its children."""

    def forked(self, pid: int, argv: list[str]) -> None: ...

    def tend(self) -> None: ...


def serve(
    path: Path, run: Callable[[list[str]], int], title: Title, tender: Tender | None = None
) -> int:
    """Fork a child running ``run(argv)`` for each launcher, until the socket at ``path`` is
    another zygote's (the newest wins) or gone; then 0.

    ``title(argv)`` is the command line the child shows in ``/proc``. The caller has imported
    what children need and started no thread (a fork copies only the calling thread).
    ``tender`` hears of every child and tends between requests.

    Raises:
        RuntimeError: a thread runs besides this one.
        UnsafePathError: ``path`` is not a socket of this user's (see
            :func:`workers.private_files.bind_socket`).
    """
    if threading.active_count() != 1:  # a fork would copy locks that other threads hold
        raise RuntimeError(f"cannot serve forks with {threading.active_count()} threads")
    listener = _listen(path)
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    log.info("zygote %s: ready on %s", os.getpid(), path)
    while True:
        if tender is not None:
            tender.tend()
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if _replaced(path, inode):
                log.info("zygote %s: %s is no longer mine; exiting", os.getpid(), path)
                listener.close()
                return 0
            continue
        try:
            pid, argv = _fork(conn, listener, run, title)
            if tender is not None:
                tender.forked(pid, argv)
        except OSError as err:  # that launcher went away, or asked wrongly: it starts cold
            log.warning("zygote %s: a launch failed: %s", os.getpid(), err)
        finally:
            conn.close()


def _listen(path: Path) -> socket.socket:
    """Listen on a fresh socket at ``path``, replacing an older zygote's (and nothing else)."""
    listener = bind_socket(path)
    listener.settimeout(CHECK_EVERY_S)
    return listener


def _replaced(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return True


def _fork(
    conn: socket.socket,
    listener: socket.socket,
    run: Callable[[list[str]], int],
    title: Title,
) -> tuple[int, list[str]]:
    """Read one launch request and fork its child; the child's pid and arguments."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise OSError(f"a launch request from uid {uid} refused")
    conn.settimeout(5.0)
    data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
    try:
        while not data.endswith(b"\n"):
            more = conn.recv(MAX_REQUEST)
            if not more:
                raise OSError("the launcher closed before its request was complete")
            data += more
        request = json.loads(data)
        if len(fds) != 3:
            raise OSError(f"expected 3 descriptors, got {len(fds)}")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(conn, listener, request, fds, run, title)  # never returns
        return pid, [str(a) for a in request["argv"]]
    finally:
        for fd in fds:
            os.close(fd)


def _child(
    conn: socket.socket,
    listener: socket.socket,
    request: dict[str, Any],
    fds: list[int],
    run: Callable[[list[str]], int],
    title: Title,
) -> None:
    """The forked child: become the launcher's process, run, report the exit status, exit."""
    code = 1
    try:
        listener.close()
        os.setsid()  # out of the zygote's process group: stopping the zygote spares children
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = [str(a) for a in request["argv"]]
        if title is not None:
            set_title(title(argv))
        conn.settimeout(None)
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        threading.Thread(target=_die_with_launcher, args=(conn,), daemon=True).start()
        code = run(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        finally:
            os._exit(code)


def _die_with_launcher(conn: socket.socket) -> None:
    """The launcher is this child to whoever started it: when it is gone, so is the child."""
    while True:
        try:
            if not conn.recv(1):
                break
        except OSError:
            break
    os.kill(os.getpid(), signal.SIGKILL)


def set_title(args: list[str]) -> None:
    """Rewrite this process's command line in ``/proc`` to ``args`` when they fit in the
    space of its own (the zygote's); leave it as it is otherwise."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        title = b"\0".join(os.fsencode(a) for a in args) + b"\0"
        if len(title) > end - start:
            return
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(title.ljust(end - start, b"\0"))
    except (OSError, ValueError, IndexError) as err:
        log.warning("cannot set the process title: %s", err)
