"""``sweeps up``: the embedded stack on loopback (MLflow server, a Ray head, the API).

Every port of every process the stack starts is bound to loopback. Everything lives under
``.sweeps/``: MLflow's SQLite store and artifacts, the Ray token, Tune's experiments, the service
database and each process's log. Each process runs in its own process group; stopping the stack
stops those groups and then the Ray workers and job drivers that left them, so nothing it
started outlives it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
from pydantic import SecretStr

from service.config import STATE_DIR, Settings, is_loopback
from service.errors import ServiceError
from workers.private_files import private_dir, read_secret, write_secret

BIN = Path(sys.executable).parent
MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""The MLflow server's environment: no job execution (it would start a second service)."""
API_GRACEFUL_SHUTDOWN_S = 5
"""Seconds the API gets, once told to stop, to finish its requests before they are cut."""


class StackError(ServiceError):
    """A process of the stack did not start; the message points at its log."""


@dataclass
class Started:
    """A process the stack started."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mlflow_server_command(root: Path, port: int) -> list[str]:
    """An MLflow tracking server on ``127.0.0.1:port`` with its SQLite store and artifacts
    under ``root``, an existing directory (run it with :data:`MLFLOW_ENV`)."""
    return [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def ray_head_command(
    *, port: int, dashboard_port: int, temp_dir: Path, num_cpus: int | None = None
) -> list[str]:
    """``ray start --head --block`` with its ports given or taken free; run it with
    :func:`ray_head_env` for every port on loopback."""
    return [
        str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
        # The node's address: Ray's servers (GCS, raylet, object manager, workers, agents,
        # client server, metrics) bind 127.0.0.1 when it is 127.0.0.1, and all interfaces or
        # the host's address otherwise.
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        # Ports nobody dials from outside, taken free so that another Ray on this host
        # (default agent port 52365, client server 10001) cannot kill our dashboard agent
        # and with it every job submission ("No available agent to submit job").
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        *([f"--num-cpus={num_cpus}"] if num_cpus is not None else []),
    ]  # fmt: skip


RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's "single machine" mode. Without it `ray start` replaces a loopback --node-ip-address
with the host's address (so that other machines could join), and ``ray.init`` looks for its
node at the host's address: every process that joins a loopback cluster needs it, the head and
any ``ray.init`` outside the cluster's own workers and jobs (which inherit it)."""


RAY_NODE_ENV = {"RAY_enable_metrics_collection": "0"}
"""Every Ray node's environment (docker/ray-node.sh sets the same). With metrics collection on,
each node's dashboard agent keeps a Prometheus series per worker process name it ever saw, and
every sweep's job supervisor has a name of its own: the head's agent grew by about 0.5 MB a
sweep, without bound (bench/RESULTS.md). Nothing here reads Ray's metrics (no Prometheus)."""


def ray_head_env() -> dict[str, str]:
    """The environment :func:`ray_head_command` needs on top of the caller's for a head that
    binds only loopback, and that no other Ray on this host can take a port from."""
    return {
        **RAY_NODE_ENV,
        **RAY_LOOPBACK_ENV,
        # Metrics servers on fixed default ports (44227, 44217): taken free, as another Ray
        # here may hold the defaults.
        "DASHBOARD_METRIC_PORT": str(free_port()),
        "AUTOSCALER_METRIC_PORT": str(free_port()),
    }


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path | None = None
) -> None:
    """Wait until ``url`` answers below HTTP 500 (a 401 counts: up, asking for a token).

    Raises:
        StackError: ``proc`` exited, or ``url`` did not answer within ``timeout`` seconds.
    """
    see = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited ({proc.returncode}){see}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise StackError(f"{what} did not answer at {url} within {timeout:.0f} s{see}")


def _port(url: str, default: int) -> int:
    return urlparse(url if "://" in url else f"tcp://{url}").port or default


class Stack:
    """Starts and stops MLflow, a Ray head (port 6380 by default) and the API."""

    def __init__(self, settings: Settings, state_dir: Path = STATE_DIR) -> None:
        self.state = state_dir.resolve()
        # Short (Ray's socket paths must fit 107 bytes) and one per state folder: stacks that
        # share a Ray temp dir share its ray_current_cluster file, and a job of one cluster
        # then connects to another's head.
        digest = hashlib.sha1(str(self.state).encode()).hexdigest()[:10]
        self.ray_temp = Path(f"/tmp/sweeps-ray-{os.getuid()}-{digest}")
        token_file = self.state / "ray" / "auth_token"
        self.token_file = token_file
        self.settings = settings.model_copy(update={"ray_auth_token": None})
        self.procs: list[Started] = []

    def start(self) -> Settings:
        """Start the three processes and wait until the API is ready; returns its settings.

        Raises:
            StackError: the settings would serve the API beyond loopback, or a process did not
                start (whatever had started is stopped again).
            UnsafePathError: the Ray token's folder or file is not this user's own (the message
                says the fix).
        """
        if not is_loopback(self.settings.host):
            raise StackError(
                f"SWEEPS_HOST={self.settings.host}: `sweeps up` serves the API on loopback "
                "only; set SWEEPS_HOST=127.0.0.1 (the compose stack serves a network)"
            )
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        token = self._token()
        self.settings = self.settings.model_copy(update={"ray_auth_token": token})
        try:
            self._start_mlflow()
            self._start_ray()
            self._start_api()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.settings

    def _token(self) -> SecretStr:
        """Ray's token, from the token file; a fresh one is written there first if it is missing
        (:mod:`workers.private_files`: a private folder, a file of mode 0600, no links)."""
        private_dir(self.token_file.parent)
        if not os.path.lexists(self.token_file):
            write_secret(self.token_file, secrets.token_hex(32))
        return SecretStr(read_secret(self.token_file).strip())

    def _ray_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def _start_mlflow(self) -> None:
        root = self.state / "mlflow"
        root.mkdir(parents=True, exist_ok=True)
        port = _port(self.settings.mlflow_tracking_uri, 5000)
        self._spawn("mlflow", mlflow_server_command(root, port), MLFLOW_ENV)
        self._wait_http("mlflow", f"{self.settings.mlflow_tracking_uri.rstrip('/')}/health", 90)

    def _start_ray(self) -> None:
        cmd = ray_head_command(
            port=_port(self.settings.ray_address, 6380),
            dashboard_port=_port(self.settings.ray_dashboard_url, 8265),
            temp_dir=self.ray_temp,
        )
        self._spawn("ray", cmd, ray_head_env() | self._ray_env())
        self._wait_http("ray", f"{self.settings.ray_dashboard_url.rstrip('/')}/api/version", 120)

    def _start_api(self) -> None:
        s = self.settings
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app",
            "--host", s.host, "--port", str(s.port), "--workers", "1",
            # held GETs (long polls) are cut short rather than delaying a stop by up to a minute
            "--timeout-graceful-shutdown", str(API_GRACEFUL_SHUTDOWN_S),
        ]  # fmt: skip
        self._spawn("api", cmd, settings_env(s) | self._ray_env())
        self._wait_http("api", f"http://{s.host}:{s.port}/healthz", 60)

    def _wait_ready(self, timeout: float = 60) -> None:
        url = f"http://{self.settings.host}:{self.settings.port}/readyz"
        token = self.settings.api_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        answer = httpx.get(url, headers=headers).text
        raise StackError(f"the API is not ready after {timeout:.0f} s: {answer}")

    def _spawn(self, name: str, cmd: list[str], extra_env: dict[str, str]) -> None:
        log = self.state / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                env={**os.environ, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(Started(name, proc, log))

    def _wait_http(self, name: str, url: str, timeout: float) -> None:
        started = next(p for p in self.procs if p.name == name)
        wait_http(url, started.proc, timeout, name, started.log)

    def stop(self) -> None:
        """Stop what was started, the API first (SIGTERM, then SIGKILL after a grace period),
        then SIGKILL what Ray started outside its group; returns once all of it is gone."""
        for started in reversed(self.procs):
            kill_group(started.proc)
        self.procs.clear()
        # Ray's workers and job drivers run in sessions of their own; each inherited the
        # stack's Ray environment, which names this stack's token file and nothing else does.
        kill_environ_naming(f"RAY_AUTH_TOKEN_PATH={self.token_file}")


def kill_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL whatever is left of it.

    The leader exiting is not enough: ``ray start --block`` leaves its GCS and raylet in the
    group, so the group always gets the SIGKILL too.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        if sig == signal.SIGTERM:
            time.sleep(1.0)  # let the rest of the group exit on its own first


def kill_environ_naming(entry: str, timeout: float = 10.0) -> None:
    """SIGKILL this user's processes whose environment holds ``entry`` (``NAME=value``) and
    wait up to ``timeout`` seconds for them to be gone. Reads ``/proc``: a no-op without it."""
    needle = b"\0" + entry.encode() + b"\0"
    doomed = []
    for pid in _pids():
        with contextlib.suppress(OSError):  # gone, or not ours
            if needle in b"\0" + Path(f"/proc/{pid}/environ").read_bytes() + b"\0":
                os.kill(pid, signal.SIGKILL)
                doomed.append(pid)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in doomed) and time.monotonic() < deadline:
        time.sleep(0.1)


def _pids() -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    return [int(e.name) for e in proc.iterdir() if e.name.isdigit() and int(e.name) != os.getpid()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as ``SWEEPS_*`` variables, for a process that builds the same settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"SWEEPS_{name.upper()}"] = str(raw)
    return env
