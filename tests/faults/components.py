"""Real components of the fault tests' own, to break on purpose: a Ray cluster (a head and extra
nodes), an MLflow server and a PostgreSQL server, each stoppable and restartable in place (same
ports, same state), and a server that accepts connections and never answers.

The session's shared Ray head, MLflow server and PostgreSQL are never touched by these tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from service.cli.stack import (
    BIN,
    MLFLOW_ENV,
    RAY_NODE_ENV,
    free_port,
    mlflow_server_command,
    ray_head_command,
    wait_http,
)

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
PG_BIN = PG_BINS[-1].parent if PG_BINS else Path("/usr/lib/postgresql/15/bin")
"""Debian's PostgreSQL server binaries (``make tools`` installs them when missing)."""


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the process group ``proc`` leads (no goodbye) and reap it."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


class PrivateRay:
    """A Ray head on its own ports, temp directory and token, with extra nodes on demand.

    ``kill`` takes the head down with everything it runs (jobs, drivers, trial workers);
    ``start`` again brings a new head up on the same ports and token.
    """

    def __init__(self, root: Path, num_cpus: int) -> None:
        self.root, self.num_cpus = root, num_cpus
        self.port, self.dashboard_port = free_port(), free_port()
        self.token = secrets.token_hex(32)
        self.token_file = root / "ray_token"
        self.token_file.write_text(self.token)
        self.env = {
            **os.environ,
            **RAY_NODE_ENV,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }
        self.head: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.temp_dirs: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
        self.temp_dirs.append(temp_dir)
        cmd = ray_head_command(
            port=self.port,
            dashboard_port=self.dashboard_port,
            temp_dir=Path(temp_dir),
            num_cpus=self.num_cpus,
        )
        self.head = self._spawn(cmd, "head")
        wait_http(f"{self.dashboard_url}/api/version", self.head, 120, "ray head")

    def add_node(self, num_cpus: int) -> subprocess.Popen[bytes]:
        """A second node on this machine (as a worker machine would join), once it is up."""
        ports = (
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
            "--object-manager-port",
        )  # fmt: skip
        cmd = [str(BIN / "ray"), "start", f"--address={self.address}", "--block",
               f"--num-cpus={num_cpus}", *(f"{p}={free_port()}" for p in ports)]  # fmt: skip
        node = self._spawn(cmd, f"node{len(self.nodes)}")
        self.nodes.append(node)
        time.sleep(8)  # the raylet registers within seconds; the test then checks its workers
        assert node.poll() is None, (self.root / f"node{len(self.nodes) - 1}.log").read_text()
        return node

    def dashboard(self) -> int:
        """The pid of the head's dashboard (Ray's Jobs API). Pause it (SIGSTOP) to make the
        Jobs API unreachable while the GCS, raylet, jobs and drivers run on; killed, it takes
        the head with it (``ray start --block`` stops the rest when one process dies)."""
        assert self.head is not None
        for pid, _, pgid in _processes():
            if pgid == self.head.pid and b"dashboard/dashboard.py" in _cmdline(pid):
                return pid
        raise AssertionError("no dashboard process in the head's group")

    def kill(self) -> None:
        """The head and every node, and whatever they started (jobs' drivers and trial
        workers too, which name the cluster's token file in their environment), SIGKILLed."""
        for node in self.nodes:
            _kill(node)
        _kill(self.head)
        _kill_naming([*self.temp_dirs, str(self.token_file)])

    def close(self) -> None:
        self.kill()
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )


def _kill_naming(markers: list[str]) -> None:
    """SIGKILL our processes whose command line or environment names one of ``markers``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(m.encode() in seen for m in markers):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def trial_workers(marker: str) -> list[int]:
    """Process ids of the Tune trial actors (``ray::ImplicitFunc``) of the cluster whose
    processes name ``marker`` (its temp directory) in their environment; read from ``/proc``,
    so this process never joins a cluster."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::ImplicitFunc") and marker.encode() in env:
            found.append(int(entry.name))
    return found


def workers_of(node: subprocess.Popen[bytes]) -> list[int]:
    """Process ids of the Ray workers a node's raylet started (they run in sessions of their
    own, so they are found by their parent, a process of the node's group)."""
    group = {pid for pid, _, pgid in _processes() if pgid == node.pid}
    return [pid for pid, ppid, pgid in _processes() if ppid in group and pgid != node.pid]


def trial_workers_of(node: subprocess.Popen[bytes]) -> list[int]:
    """The Tune trial actors (``ray::ImplicitFunc``) among a node's workers."""
    return [pid for pid in workers_of(node) if _cmdline(pid).startswith(b"ray::ImplicitFunc")]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _processes() -> list[tuple[int, int, int]]:
    """``(pid, ppid, pgid)`` of every process."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out.append((int(entry.name), int(fields[1]), int(fields[2])))
    return out


class PrivateMlflow:
    """An MLflow server on its own port and store; ``stop`` and ``start`` keep both."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root / "mlflow", free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                mlflow_server_command(self.root, self.port),
                env={**os.environ, **MLFLOW_ENV},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(f"{self.uri}/health", self.proc, 90, "mlflow server")

    def stop(self) -> None:
        _kill(self.proc)


class PrivatePostgres:
    """A PostgreSQL server of the test's own (Debian's binaries, run as the ``postgres`` user,
    on a free port), stopped and started at will with its data kept."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            PG_BIN / "initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"
        )
        self.log = root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/sweeps"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            PG_BIN / "pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l",
            str(self.dir / "server.log"), "-w", "start",
        )  # fmt: skip

    def create_database(self) -> None:
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE sweeps")

    def stop(self) -> None:
        data = str(self.dir / "data")
        self._as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")

    def close(self) -> None:
        """Stop the server and delete its data (its log is kept beside the test's files)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        if (self.dir / "server.log").exists():
            shutil.copy(self.dir / "server.log", self.log)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _as_postgres(*cmd: object) -> None:
        args = [str(c) for c in cmd]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, timeout=120)


class BlackHole:
    """A TCP server that accepts every connection and never answers (a hung MLflow)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()
