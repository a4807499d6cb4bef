"""The deployment files: the compose stack validates, configures the API through its settings
only, publishes no Ray port, and the scripts it runs refuse what they should.

`docker-compose config` is the real validator (Debian's docker-compose, installed by
`make tools`); no Docker engine is needed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from tests.service.conftest import PgServer

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_S3 = DOCKER / "docker-compose.s3.yml"
COMPOSE_MULTINODE = DOCKER / "docker-compose.multinode.yml"
COMPOSE_WORKER = DOCKER / "docker-compose.worker.yml"
ALL_COMPOSE = (COMPOSE, COMPOSE_S3, COMPOSE_MULTINODE, COMPOSE_WORKER)
MULTINODE_ENV = {"SWEEPS_RAY_NETWORK": "sweeps-ray", "SWEEPS_RAY_HEAD_IP": "10.0.0.10"}
ENV_EXAMPLE = ROOT / ".env.example"
RAY_NODE = DOCKER / "ray-node.sh"
INIT_MLFLOW_DB = DOCKER / "postgres" / "10-create-mlflow-db.sh"
APP_IMAGE = "toolbox-sweeps"
PUBLISHED = {"api", "mlflow"}
S3_ENV = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_ENDPOINT_URL": "http://s3"}

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose missing: run `make tools`"
)


def _clean_env(**extra: str) -> dict[str, str]:
    """PATH only, so neither the caller's shell nor a stray .env decides what compose sees."""
    return {"PATH": os.environ["PATH"], **extra}


def _compose(*args: str, env_file: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    cmd = ["docker-compose", "--project-directory", str(DOCKER)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=_clean_env(**env), timeout=120
    )


@cache
def _config(*files: Path) -> dict[str, Any]:
    """The resolved stack, with .env.example's values (placeholders included)."""
    args = [a for f in files for a in ("-f", str(f))]
    done = _compose(*args, "config", env_file=ENV_EXAMPLE, **S3_ENV, **MULTINODE_ENV)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _settings_env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def _app_services(config: Mapping[str, Any]) -> dict[str, Any]:
    """The services that run the project's image (the API, MLflow and the Ray nodes)."""
    return {
        name: svc
        for name, svc in config["services"].items()
        if str(svc.get("image", "")).startswith(APP_IMAGE)
    }


@cache
def _package_sources(package_dir: Path) -> str:
    return "\n".join(
        p.read_text(errors="ignore") for p in package_dir.rglob("*.py") if "tests" not in p.parts
    )


def _read_by(name: str) -> bool:
    """Whether the tool a container runs reads ``name``: Ray for RAY_*, MLflow for MLFLOW_*."""
    owners = {"RAY_": "ray", "MLFLOW_": "mlflow"}
    for prefix, package in owners.items():
        spec = importlib.util.find_spec(package)
        if name.startswith(prefix) and spec is not None and spec.origin is not None:
            return f'"{name}"' in _package_sources(Path(spec.origin).parent)
    return False


def _env_example_names() -> set[str]:
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def _interpolated_names(*files: Path) -> set[str]:
    return {m for f in files for m in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", f.read_text())}


@needs_compose
def test_compose_file_validates_with_the_example_settings() -> None:
    assert set(_config(COMPOSE)["services"]) == {
        "postgres",
        "mlflow",
        "ray-head",
        "ray-worker",
        "api",
    }


@needs_compose
def test_compose_refuses_to_render_without_secrets() -> None:
    done = _compose("-f", str(COMPOSE), "config")
    assert done.returncode != 0
    assert "SWEEPS_" in done.stderr and "in .env" in done.stderr


@needs_compose
def test_s3_override_merges_onto_the_stack() -> None:
    config = _config(COMPOSE, COMPOSE_S3)
    for name in ("mlflow", "ray-head", "ray-worker", "api"):
        assert config["services"][name]["environment"]["AWS_ENDPOINT_URL"] == "http://s3"


@needs_compose
def test_multinode_override_puts_the_ray_nodes_on_the_private_network() -> None:
    services = _config(COMPOSE, COMPOSE_MULTINODE)["services"]
    head = services["ray-head"]
    assert head["networks"]["ray"]["ipv4_address"] == "10.0.0.10"
    assert "--node-ip-address=10.0.0.10" in head["command"]
    assert services["ray-worker"]["command"][-1] == "10.0.0.10:6379"
    assert "ray" in services["ray-worker"]["networks"]
    assert not services["ray-head"].get("ports")


@needs_compose
def test_worker_of_another_machine_joins_the_head_with_the_token_and_a_gpu() -> None:
    (worker,) = _config(COMPOSE_WORKER)["services"].values()
    assert worker["command"] == ["ray-node", "worker", "10.0.0.10:6379"]
    assert worker["environment"]["RAY_AUTH_MODE"] == "token"
    assert worker["environment"]["RAY_AUTH_TOKEN"] == "change-me"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert not worker.get("ports")


@needs_compose
def test_containers_start_as_non_root_users() -> None:
    services = _config(COMPOSE)["services"]
    assert services["postgres"]["user"] == "postgres"  # the app image's USER is sweeps
    assert "USER sweeps" in (DOCKER / "Dockerfile").read_text()


@needs_compose
@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_S3)], ids=["base", "s3"])
def test_api_is_configured_only_by_settings_fields(files: tuple[Path, ...]) -> None:
    api_env = set(_config(*files)["services"]["api"]["environment"])
    unknown = {n for n in api_env - _settings_env_names() if not n.startswith("AWS_")}
    assert not unknown, f"the API does not read {sorted(unknown)}"
    assert {"SWEEPS_API_TOKEN", "SWEEPS_RAY_AUTH_TOKEN", "SWEEPS_DATABASE_URL"} <= api_env


@needs_compose
def test_api_runs_the_app_factory_in_one_process() -> None:
    command = _config(COMPOSE)["services"]["api"]["command"]
    assert "service.api.app:create_app" in command and "--factory" in command
    assert "--workers=1" in command  # the dispatcher assumes one API process per database


@needs_compose
def test_every_variable_set_for_app_services_is_read_by_what_runs_there() -> None:
    settings_names = _settings_env_names()
    for name, svc in _app_services(_config(COMPOSE)).items():
        for var in svc.get("environment") or {}:
            known = var in settings_names if var.startswith("SWEEPS_") else _read_by(var)
            assert known, f"{name} sets {var}, which nothing in the container reads"


@needs_compose
def test_only_the_api_and_mlflow_ui_are_published() -> None:
    services = _config(COMPOSE)["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == PUBLISHED
    ray_ports = {int(p) for p in re.findall(r"port=(\d+)", RAY_NODE.read_text())}
    assert {6379, 8265, 10001} <= ray_ports
    for name in published:
        targets = {int(str(p).split(":")[-1].split("/")[0]) for p in services[name]["ports"]}
        assert not targets & ray_ports, f"{name} publishes a Ray port"


@needs_compose
def test_ray_nodes_share_the_token_and_turn_auth_on() -> None:
    services = _config(COMPOSE)["services"]
    for name in ("ray-head", "ray-worker"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == services["api"]["environment"]["SWEEPS_RAY_AUTH_TOKEN"]
        assert services[name]["command"][0] == "ray-node"


@needs_compose
def test_workers_reserve_gpus_and_api_waits_for_healthy_dependencies() -> None:
    services = _config(COMPOSE)["services"]
    (device,) = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "container_name" not in services["ray-worker"]  # or --scale could not work
    waits = services["api"]["depends_on"]
    assert set(waits) == {"postgres", "mlflow", "ray-head"}
    assert all(w["condition"] == "service_healthy" for w in waits.values())
    assert all("healthcheck" in services[name] for name in waits)


@needs_compose
def test_tune_state_volume_is_shared_by_api_and_ray_nodes() -> None:
    services = _config(COMPOSE)["services"]
    for name in ("api", "ray-head", "ray-worker"):
        sources = {_volume_source(v) for v in services[name]["volumes"]}
        assert "tune-state" in sources, name


def _volume_source(volume: str | Mapping[str, Any]) -> str:
    return volume.split(":")[0] if isinstance(volume, str) else str(volume["source"])


def test_env_example_documents_every_setting_and_compose_variable() -> None:
    names = _env_example_names()
    compose_vars = _interpolated_names(*ALL_COMPOSE)
    assert _settings_env_names() - names == set(), "settings missing from .env.example"
    assert compose_vars - names == set(), "compose variables missing from .env.example"
    assert names - compose_vars - _settings_env_names() == set(), "unused .env.example entries"


def test_env_example_secrets_are_placeholders() -> None:
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    secrets = {"SWEEPS_API_TOKEN", "SWEEPS_RAY_AUTH_TOKEN", "SWEEPS_POSTGRES_PASSWORD"}
    assert {values[name] for name in secrets} == {"change-me"}


@pytest.mark.parametrize("token", ["", "change-me", "short"])
def test_ray_node_refuses_a_missing_placeholder_or_short_token(token: str) -> None:
    done = subprocess.run(
        ["sh", str(RAY_NODE), "head"],
        capture_output=True,
        text=True,
        env=_clean_env(RAY_AUTH_TOKEN=token),
        timeout=30,
    )
    assert done.returncode == 64
    assert "token" in done.stderr


def test_ray_node_accepts_a_real_token_then_checks_the_role() -> None:
    done = subprocess.run(
        ["sh", str(RAY_NODE), "bogus"],
        capture_output=True,
        text=True,
        env=_clean_env(RAY_AUTH_TOKEN=uuid.uuid4().hex),
        timeout=30,
    )
    assert done.returncode == 64
    assert "unknown role 'bogus'" in done.stderr


@pytest.mark.postgres
def test_postgres_init_script_creates_the_mlflow_database_once(pg_server: PgServer) -> None:
    db = f"sweeps_mlflow_{uuid.uuid4().hex[:8]}"
    env = _clean_env(
        POSTGRES_USER=pg_server.user,
        POSTGRES_DB=pg_server.maintenance_db,
        MLFLOW_DB=db,
        PGHOST=pg_server.host,
        PGPORT=str(pg_server.port),
    )
    try:
        for _ in range(2):  # a second run (volume re-initialised by hand) must not fail
            done = subprocess.run(
                ["sh", str(INIT_MLFLOW_DB)], capture_output=True, text=True, env=env, timeout=60
            )
            assert done.returncode == 0, done.stderr
        exists = subprocess.run(
            ["psql", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert exists.stdout.strip() == "1"
    finally:
        subprocess.run(["dropdb", "--if-exists", db], env=env, capture_output=True, timeout=30)
