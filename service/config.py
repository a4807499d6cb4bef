"""The service's settings: the one place that reads the environment (prefix ``SWEEPS_``).

Build them with :func:`load_settings`; nothing is read at import time, so tests build their own
:class:`Settings` and hand it to :func:`service.api.app.create_app`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Literal

import limits
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from workers.events import KeepCheckpoints
from workers.private_files import write_secret

STATE_DIR = Path(".sweeps")
"""Where the embedded stack keeps its state (database, MLflow store, Tune experiments, logs)."""


def _default_database_url() -> str:
    return f"sqlite:///{(STATE_DIR / 'sweeps.db').resolve()}"


def _default_database_url_file() -> Path:
    return (STATE_DIR / "secrets" / "database-url").resolve()


def _default_storage_path() -> str:
    return str((STATE_DIR / "ray_results").resolve())


def _default_ray_token() -> SecretStr | None:
    path = Path.home() / ".ray" / "auth_token"
    if path.is_file():
        token = path.read_text().strip()
        return SecretStr(token) if token else None
    return None


DRIVER_ZYGOTE_SOCKET_ENV = "SWEEPS_DRIVER_ZYGOTE_SOCKET"
WORKER_ZYGOTE_SOCKET_ENV = "SWEEPS_WORKER_ZYGOTE_SOCKET"
"""Where jobs find the zygotes' sockets (read by service.job and workers.warm, which import
no settings: they repeat these names)."""
MAX_SOCKET_PATH = 100
"""Longer paths do not fit a Unix socket address (108 bytes): such a deployment has no zygote."""

PRODUCTION_SECRETS = ("api_token", "ray_auth_token")
"""Settings that must hold a real secret when ``env`` is production."""
PLACEHOLDERS = ("change-me", "changeme", "change_me")
MIN_SECRET_LENGTH = 16


def _secret_problem(secret: SecretStr | None) -> str | None:
    """Why ``secret`` is not fit for production, or None when it is."""
    value = secret.get_secret_value().strip() if secret is not None else ""
    if not value:
        return "is not set"
    if any(p in value.lower() for p in PLACEHOLDERS):
        return "is still the .env.example placeholder"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def _database_password_problem(url: str) -> str | None:
    """Why the password of a server database's URL is not fit for production (SQLite has
    none), or None when it is."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # not a URL at all: the engine says so when it starts
    if parsed.get_backend_name() == "sqlite":
        return None
    return _secret_problem(SecretStr(parsed.password or ""))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting of the API, the CLI and the sweep job (environment prefix ``SWEEPS_``).

    Attributes:
        database_url: SQLAlchemy URL; SQLite under ``.sweeps/`` by default, or
            ``postgresql+psycopg://user:pass@host/db``. When it is not set, it is read from
            ``database_url_file`` if that file exists.
        database_url_file: where sweep jobs read the database URL (the API writes it there,
            mode 0600); jobs get this path, never the URL, which carries the password.
        ray_address: the Ray cluster's GCS address (``ray start --head --port``).
        ray_dashboard_url: the Ray dashboard, which serves the Jobs API sweeps are submitted to.
        ray_auth_token: Ray's token when the cluster uses token auth; by default the content of
            ``~/.ray/auth_token`` when that file exists.
        mlflow_tracking_uri: the MLflow tracking server the sweep jobs log to.
        mlflow_ui_url: the public base of MLflow links in responses (default: the tracking URI).
        storage_path: where Ray Tune keeps experiment state (a directory, or an ``s3://`` URI);
            a resumed sweep restores from here.
        api_token: the bearer token every route but ``/healthz`` requires (see
            :mod:`service.api.auth`); never sent to jobs. Without it the API must bind to loopback.
        env: ``development`` or ``production``; production refuses to start unless
            ``api_token``, ``ray_auth_token`` and a server database's password are real
            secrets (set, no placeholder, at least 16 characters).
        host, port: where ``sweeps up`` serves the API.
        public_url: the API's public base URL for self links (default ``http://host:port``).
        job_python: the interpreter a Ray job runs ``-m service.job`` with.
        cancel_grace_seconds: how long the driver gets to cancel before the API stops its job.
        monitor_interval_seconds: how often the API checks cancellations and vanished jobs.
        max_resumes: how many times a sweep whose job vanished is resubmitted.
        ray_grace_seconds: how long Ray's Jobs API may stay unreachable before the open sweeps
            fail; never while Ray's GCS answers (their drivers train on; see
            :meth:`~service.dispatch.dispatcher.Dispatcher.reconcile`).
        unschedulable_grace_seconds: how long an open sweep's trials may fit no node of the
            cluster (nodes still joining, or Ray could not list them when it was submitted)
            before it fails, naming the largest node.
        lease_seconds: the term of the database lease that lets one API process at a time run
            the background work (:mod:`service.dispatch.lease`); another takes over within it
            when the holder dies.
        warm_drivers: standby sweep jobs kept started and waiting, so a submitted sweep skips
            the job's start-up (see :mod:`service.dispatch.standby`); None (the default) keeps
            one per CPU of the cluster (at least 1, at most 4); 0 starts a job per sweep on
            demand. Without ``driver_zygote`` they are topped up only while no sweep is open.
        driver_zygote: sweep jobs fork their driver from a driver zygote (a job that imported
            the driver once, :mod:`service.job.zygote`) instead of starting a Python each; a
            job that finds no zygote starts cold, as with False.
        worker_zygote: sweeps' Ray trial workers are forked from a trial worker zygote (a job
            that imported Ray Tune, torch and the toolbox once, :mod:`workers.warm.trials`, one
            on every node that runs trials); a worker that finds no zygote starts cold, as with
            False.
        zygote_dir: the directory, the same path on every node and private to each, where the
            zygotes listen (default: beside ``database_url_file``, which suits one machine; in
            a cluster, a node-local path such as ``/tmp/sweeps-zygotes``).
        max_body_bytes, rate_limit, max_open_sweeps, max_held_polls, max_wait_seconds,
            max_trial_epochs: the API's limits (see :mod:`service.api.limits`): request body
            size, requests per token or client address (``600/minute``), sweeps queued or
            running at once, long polls one client holds at once, the longest ``?wait=``, and
            a sweep's trials x epochs.
        data_dir, data_download: where trial workers read data sets (default
            ``~/.cache/toolbox-sweeps/data``) and whether they may download a missing one
            there; deployment settings, never sweep parameters.
        tracking_plots_seconds: how often, at most, a running sweep's pictures and trial table
            on its MLflow parent run are drawn again (see :mod:`service.dispatch.parent_plots`).
        keep_checkpoints: what a final sweep leaves on storage: ``best`` (the best trial's
            last checkpoint), ``none`` or ``all`` (Tune's experiment directory untouched).
    """

    model_config = SettingsConfigDict(env_prefix="SWEEPS_", extra="ignore")

    # repr=False: a PostgreSQL URL carries its password, and settings get logged.
    database_url: str = Field(default_factory=_default_database_url, repr=False)
    database_url_file: Path = Field(default_factory=_default_database_url_file)
    ray_address: str = "127.0.0.1:6380"
    ray_dashboard_url: str = "http://127.0.0.1:8265"
    ray_auth_token: SecretStr | None = Field(default_factory=_default_ray_token)
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    mlflow_ui_url: str | None = None
    storage_path: str = Field(default_factory=_default_storage_path)
    api_token: SecretStr | None = None
    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = None
    job_python: str = Field(default_factory=lambda: sys.executable)
    cancel_grace_seconds: float = Field(20.0, gt=0)
    monitor_interval_seconds: float = Field(2.0, gt=0)
    max_resumes: int = Field(3, ge=0)
    warm_drivers: int | None = Field(None, ge=0, le=16)
    driver_zygote: bool = True
    worker_zygote: bool = True
    zygote_dir: Path | None = None
    db_patience_seconds: float = Field(300.0, gt=0)
    heartbeat_seconds: float = Field(5.0, gt=0)
    stuck_after_seconds: float = Field(120.0, gt=0)
    ray_grace_seconds: float = Field(300.0, gt=0)
    unschedulable_grace_seconds: float = Field(60.0, gt=0)
    lease_seconds: float = Field(10.0, gt=0)
    tracking_backoff_seconds: float = Field(30.0, gt=0)
    tracking_plots_seconds: float = Field(10.0, gt=0)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    rate_limit: str = "600/minute"
    max_open_sweeps: int = Field(20, ge=1)
    max_held_polls: int = Field(8, ge=1)
    max_wait_seconds: float = Field(60.0, gt=0, le=60)
    max_trial_epochs: int = Field(200_000, ge=1)
    data_dir: str | None = None
    data_download: bool = True
    keep_checkpoints: KeepCheckpoints = "best"

    @model_validator(mode="after")
    def _read_database_url_file(self) -> Settings:
        if "database_url" not in self.model_fields_set and self.database_url_file.is_file():
            self.database_url = self.database_url_file.read_text().strip()
        return self

    @model_validator(mode="after")
    def _fill_links(self) -> Settings:
        if self.mlflow_ui_url is None:
            self.mlflow_ui_url = self.mlflow_tracking_uri
        if self.public_url is None:
            self.public_url = f"http://{self.host}:{self.port}"
        return self

    @field_validator("rate_limit")
    @classmethod
    def _parse_rate(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError as err:
            raise ValueError(
                f"SWEEPS_RATE_LIMIT={value!r} is not a rate; write it as 600/minute, 20/second "
                f"or 5000/hour ({err})"
            ) from None
        return value

    @model_validator(mode="after")
    def _check_liveness(self) -> Settings:
        if self.stuck_after_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"SWEEPS_STUCK_AFTER_SECONDS={self.stuck_after_seconds} must exceed twice "
                f"SWEEPS_HEARTBEAT_SECONDS={self.heartbeat_seconds}, or a live driver between "
                "two beats would be taken for stuck; raise it or beat more often"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_secrets(self) -> Settings:
        if self.env == "production":
            problems = [
                f"SWEEPS_{name.upper()} {problem}"
                for name in PRODUCTION_SECRETS
                if (problem := _secret_problem(getattr(self, name)))
            ]
            if (problem := _database_password_problem(self.database_url)) is not None:
                problems.append(f"the password in SWEEPS_DATABASE_URL {problem}")
            if problems:
                raise ValueError(
                    f"refusing to start in production: {'; '.join(problems)}. Generate each "
                    "with `openssl rand -hex 32`, or set SWEEPS_ENV=development for a local run"
                )
        if self.api_token is None and not is_loopback(self.host):
            raise ValueError(
                f"SWEEPS_HOST={self.host} would serve the API to the network without a token; "
                "set SWEEPS_API_TOKEN, or bind to 127.0.0.1"
            )
        return self

    @property
    def api_url(self) -> str:
        """The API's base URL without a trailing slash."""
        return str(self.public_url).rstrip("/")

    @property
    def mlflow_link_base(self) -> str:
        """MLflow's UI base URL without a trailing slash."""
        return str(self.mlflow_ui_url or self.mlflow_tracking_uri).rstrip("/")

    @property
    def driver_zygote_socket(self) -> Path | None:
        """Where the database's driver zygote listens (see :meth:`_zygote_socket`)."""
        return self._zygote_socket("driver") if self.driver_zygote else None

    @property
    def worker_zygote_socket(self) -> Path | None:
        """Where the database's trial worker zygote listens (see :meth:`_zygote_socket`)."""
        return self._zygote_socket("worker") if self.worker_zygote else None

    def _zygote_socket(self, kind: str) -> Path | None:
        """In ``zygote_dir`` (a private directory, :mod:`workers.private_files`); None where
        the path is too long for a Unix socket address."""
        path = (self.zygote_dir or self.database_url_file.parent) / f"{kind}-zygote.sock"
        return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None

    def zygote_env(self) -> dict[str, str]:
        """The zygotes' sockets, as jobs and their trial workers find them."""
        sockets = {
            DRIVER_ZYGOTE_SOCKET_ENV: self.driver_zygote_socket,
            WORKER_ZYGOTE_SOCKET_ENV: self.worker_zygote_socket,
        }
        return {name: str(path) for name, path in sockets.items() if path is not None}

    def job_env(self) -> dict[str, str]:
        """What a sweep job needs to rebuild these settings (never the API token)."""
        return {
            # The URL's path, never the URL: a job's environment is readable through Ray's
            # Jobs API and dashboard, and every trial worker inherits it.
            "SWEEPS_DATABASE_URL_FILE": str(self.database_url_file),
            "SWEEPS_STORAGE_PATH": self.storage_path,
            "SWEEPS_DATA_DOWNLOAD": str(self.data_download).lower(),
            "SWEEPS_KEEP_CHECKPOINTS": self.keep_checkpoints,
            **({"SWEEPS_DATA_DIR": self.data_dir} if self.data_dir else {}),
            "SWEEPS_RAY_ADDRESS": self.ray_address,
            "SWEEPS_DB_PATIENCE_SECONDS": str(self.db_patience_seconds),
            "SWEEPS_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            **self.zygote_env(),
        }


def write_database_url_file(settings: Settings) -> Path:
    """Write ``settings.database_url`` to ``settings.database_url_file`` (mode 0600, replaced
    atomically, in a private directory: :func:`workers.private_files.write_secret`), where
    sweep jobs read it; return the path.

    Raises:
        UnsafePathError: the file's directory is a symbolic link, another uid's, or writable by
            others (the message says the fix).
    """
    return write_secret(settings.database_url_file, settings.database_url + "\n")


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit ``overrides`` on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
