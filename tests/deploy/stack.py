"""The real compose stack for the deployment tests: images built without a registry or an index,
compose projects on a generated .env, and what the tests read from the engine.

The stack runs docker/docker-compose.yml as shipped but for two changes a machine without a GPU
needs: the workers run the CPU image, without the GPU reservation (`make test`'s config checks
hold the reservation).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
LOCAL = "toolbox-sweeps-local"
PYTHON_IMAGE = f"{LOCAL}/python:3.11-bookworm"
POSTGRES_IMAGE = f"{LOCAL}/postgres:15-bookworm"
DEPS_IMAGE = f"{LOCAL}/deps:cpu"
TEST_IMAGE = "toolbox-sweeps-test"
"""The app image is built under this name (tag cpu) and removed at the end; the base images
and the dependency stage above stay, reused by the next run."""
INPUTS_LABEL = "sweeps.test.inputs"
SECRET_NAMES = ("SWEEPS_API_TOKEN", "SWEEPS_RAY_AUTH_TOKEN", "SWEEPS_POSTGRES_PASSWORD")


def run(*cmd: str, timeout: float = 600, check: bool = True, **kw: Any) -> str:
    """Run ``cmd``; its stdout, or an AssertionError with its output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}"
            f"\n{done.stderr[-3000:]}"
        )
    return done.stdout


def timed(label: str, *cmd: str, timeout: float = 1800) -> float:
    """Run ``cmd`` and print how long it took (the build times the README reports)."""
    start = time.monotonic()
    run(*cmd, timeout=timeout, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    took = time.monotonic() - start
    print(f"[deploy] {label}: {took:.0f} s", flush=True)
    return took


def build_images() -> None:
    """Base images and wheelhouse (each kept when it exists), then the dependency stage and the
    app image, unless the app image was built from the same inputs (:func:`inputs_digest`, a
    label on the image): the legacy builder sends the 3 GB context again for each build."""
    timed("base images", str(DOCKER / "local" / "base-images.sh"))
    timed("wheelhouse", str(DOCKER / "local" / "wheelhouse.sh"))
    digest = inputs_digest()
    built = run(
        "docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{INPUTS_LABEL}"}}}}',
        f"{TEST_IMAGE}:cpu", check=False,
    ).strip()  # fmt: skip
    if built == digest:
        print(f"[deploy] {TEST_IMAGE}:cpu is built from these inputs", flush=True)
        return
    args = [
        "--build-arg",
        f"PYTHON_IMAGE={PYTHON_IMAGE}",
        "--build-arg",
        "OFFLINE=1",
        "--build-arg",
        "TORCH_VARIANT=cpu",
        "-f",
        str(DOCKER / "Dockerfile"),
    ]
    timed(
        "dependency stage",
        "docker",
        "build",
        *args,
        "--target",
        "deps",
        "-t",
        DEPS_IMAGE,
        str(ROOT),
    )
    label = ["--label", f"{INPUTS_LABEL}={digest}"]
    timed("app image", "docker", "build", *args, *label, "-t", f"{TEST_IMAGE}:cpu", str(ROOT))
    size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", f"{TEST_IMAGE}:cpu"))
    print(f"[deploy] {TEST_IMAGE}:cpu is {size / 1e9:.2f} GB", flush=True)


def inputs_digest() -> str:
    """A digest of what the images are built from, docker/Dockerfile and the sources of its
    ``COPY`` lines: every file's path and content, the wheelhouse's by path and size, caches
    left out (as the .dockerignore does)."""
    dockerfile = DOCKER / "Dockerfile"
    sources = [str(dockerfile.relative_to(ROOT))]
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1]]
    h = hashlib.sha256()
    for top in dict.fromkeys(sources):
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
        for path in paths:
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT)
            h.update(str(rel).encode() + b"\0")
            if rel.parts[:2] == ("docker", "wheelhouse"):
                h.update(str(path.stat().st_size).encode())
            else:
                h.update(path.read_bytes())
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_variant(compose_file: Path, out: Path) -> Path:
    """``compose_file`` with its workers on the CPU image and without the GPU reservation."""
    config = yaml.safe_load(compose_file.read_text())
    for svc in config["services"].values():
        svc.pop("build", None)  # built above, under the test's name
    worker = config["services"]["ray-worker"]
    worker.pop("deploy")
    worker["image"] = worker["image"].replace(":cuda", ":cpu")
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@dataclass
class Project:
    """One compose project: its files, its name and the .env it runs with."""

    name: str
    files: list[Path]
    env_file: Path

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        files = [a for f in self.files for a in ("-f", str(f))]
        return run(
            "docker-compose",
            "--project-directory",
            str(DOCKER),
            "-p",
            self.name,
            "--env-file",
            str(self.env_file),
            *files,
            *args,
            timeout=timeout,
            check=check,
            env={"PATH": os.environ["PATH"]},
        )

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """``docker inspect`` of the project's containers (of ``service``), running or not."""
        label = f"com.docker.compose.project={self.name}"
        ids = run("docker", "ps", "-aq", "--filter", f"label={label}").split()
        found = json.loads(run("docker", "inspect", *ids)) if ids else []
        return [
            c
            for c in found
            if service is None or c["Config"]["Labels"]["com.docker.compose.service"] == service
        ]

    def wait_healthy(self, bound: float, service: str | None = None) -> float:
        """Seconds until every container (of ``service``) runs and each with a health check
        is healthy."""
        start = time.monotonic()
        while True:
            states = [c["State"] for c in self.containers(service)]
            if states and all(_ready(s) for s in states):
                return time.monotonic() - start
            if time.monotonic() - start > bound:
                raise AssertionError(
                    f"not healthy after {bound:.0f} s: "
                    f"{[(c['Name'], c['State']) for c in self.containers()]}"
                    f"\n{self('logs', '--tail=40', check=False)[-6000:]}"
                )
            time.sleep(2)


def _ready(state: dict[str, Any]) -> bool:
    health = state.get("Health")
    return bool(state["Running"]) and (health is None or health["Status"] == "healthy")


@dataclass
class Env:
    """The generated .env: real random secrets, loopback ports, the test's images."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls, path: Path, **extra: str) -> Env:
        values = {name: secrets.token_hex(32) for name in SECRET_NAMES}
        api, mlflow = free_port(), free_port()
        values |= {
            "SWEEPS_IMAGE": TEST_IMAGE,
            "SWEEPS_POSTGRES_IMAGE": POSTGRES_IMAGE,
            "SWEEPS_API_BIND": "127.0.0.1",
            "SWEEPS_API_PORT": str(api),
            "SWEEPS_MLFLOW_PORT": str(mlflow),
            "SWEEPS_PUBLIC_URL": f"http://127.0.0.1:{api}",
            "SWEEPS_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow}",
            **extra,
        }
        path.touch(mode=0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return cls(path, values)

    @property
    def secrets(self) -> list[str]:
        return [self.values[name] for name in SECRET_NAMES]


def processes(container: dict[str, Any]) -> list[tuple[int, str]]:
    """``(uid, command line)`` of each process in ``container`` (``docker top``)."""
    top = run("docker", "top", container["Id"], "-eo", "pid,uid,args", check=False)
    rows = [line.split(None, 2) for line in top.splitlines()[1:]]
    return [(int(r[1]), r[2] if len(r) > 2 else "") for r in rows if len(r) >= 2]


def trial_hosts(containers: list[dict[str, Any]]) -> set[str]:
    """Names of the containers running a Ray actor or task now (a trial, on a worker)."""
    return {
        c["Name"]
        for c in containers
        if any(a.startswith("ray::") and "IDLE" not in a for _, a in processes(c))
    }


def forked_trial_hosts(containers: list[dict[str, Any]]) -> set[str]:
    """Names of the containers running a Ray worker (``ray::``, a trial's or an idle one) that
    their own node's trial worker zygote forked: its parent is ``workers.warm.trials`` serving,
    not a launcher."""
    found = set()
    for c in containers:
        top = run("docker", "top", c["Id"], "-eo", "pid,ppid,args", check=False)
        rows = [line.split(None, 2) for line in top.splitlines()[1:]]
        args = {r[0]: r[2] if len(r) > 2 else "" for r in rows if len(r) >= 2}
        parent = {r[0]: r[1] for r in rows if len(r) >= 2}
        for pid, line in args.items():
            zygote = args.get(parent[pid], "")
            serving = "workers.warm.trials" in zygote and "--launch" not in zygote
            if line.startswith("ray::") and serving:
                found.add(c["Name"])
    return found


def network_with_subnet(name: str) -> str:
    """Create bridge network ``name`` on a subnet the engine picks; a fixed address on it
    needs the subnet stated, so it is created again with it. Returns the subnet."""
    run("docker", "network", "create", name)
    subnet = run(
        "docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", name
    ).strip()
    run("docker", "network", "rm", name)
    run("docker", "network", "create", "--subnet", subnet, name)
    return subnet


HEALTHY_WITHIN = 420.0


class Stack:
    """The first machine's project (with the multi-node override) and its private network."""

    def __init__(self, tmp: Path, **settings: str) -> None:
        """``settings``: more values for the .env (``SWEEPS_*`` the compose file passes on)."""
        self.name = f"sweepsdeploy{uuid.uuid4().hex[:6]}"
        self.network = f"{self.name}-ray"
        subnet = network_with_subnet(self.network)
        head_ip = subnet.rsplit(".", 1)[0] + ".200"  # the engine hands out from the bottom
        self.env = Env.generate(
            tmp / ".env",
            SWEEPS_RAY_NETWORK=self.network,
            SWEEPS_RAY_HEAD_IP=head_ip,
            SWEEPS_TUNE_STATE_VOLUME=f"{self.name}_tune-state",
            **settings,
        )
        main = cpu_variant(DOCKER / "docker-compose.yml", tmp / "stack.yml")
        self.project = Project(
            self.name, [main, DOCKER / "docker-compose.multinode.yml"], self.env.path
        )
        remote = cpu_variant(DOCKER / "docker-compose.worker.yml", tmp / "worker.yml")
        self.remote = Project(f"{self.name}remote", [remote], self.env.path)
        v = self.env.values
        self.api_url = f"http://127.0.0.1:{v['SWEEPS_API_PORT']}"
        self.api = httpx.Client(
            base_url=self.api_url,
            timeout=90,
            headers={"Authorization": f"Bearer {v['SWEEPS_API_TOKEN']}"},
        )
        self.mlflow = MlflowClient(f"http://127.0.0.1:{v['SWEEPS_MLFLOW_PORT']}")
        self.healthy_after = 0.0

    def up(self, *args: str) -> float:
        start = time.monotonic()
        self.project("up", "-d", "--no-build", *args)
        self.healthy_after = time.monotonic() - start + self.project.wait_healthy(HEALTHY_WITHIN)
        print(f"[deploy] up to healthy: {self.healthy_after:.0f} s", flush=True)
        return self.healthy_after

    def teardown(self) -> None:
        self.remote("down", "-v", "--remove-orphans", check=False)
        self.project("down", "-v", "--remove-orphans", check=False)
        run("docker", "network", "rm", self.network, check=False)


if __name__ == "__main__":  # `make deploy-images`: the images alone, for `make test-deploy`
    build_images()
