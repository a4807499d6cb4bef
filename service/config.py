"""The service's settings: the one place that reads the environment (prefix ``SWEEPS_``).

Build them with :func:`load_settings`; nothing is read at import time, so tests build their own
:class:`Settings` and hand it to :func:`service.api.app.create_app`.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STATE_DIR = Path(".sweeps")
"""Where the embedded stack keeps its state (database, MLflow store, Tune experiments, logs)."""


def _default_database_url() -> str:
    return f"sqlite:///{(STATE_DIR / 'sweeps.db').resolve()}"


def _default_storage_path() -> str:
    return str((STATE_DIR / "ray_results").resolve())


def _default_ray_token() -> SecretStr | None:
    path = Path.home() / ".ray" / "auth_token"
    if path.is_file():
        token = path.read_text().strip()
        return SecretStr(token) if token else None
    return None


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


def _is_loopback(host: str) -> bool:
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
            ``postgresql+psycopg://user:pass@host/db``.
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
            ``api_token`` and ``ray_auth_token`` are real secrets (set, no placeholder, at
            least 16 characters).
        host, port: where ``sweeps up`` serves the API.
        public_url: the API's public base URL for self links (default ``http://host:port``).
        job_python: the interpreter a Ray job runs ``-m service.job`` with.
        cancel_grace_seconds: how long the driver gets to cancel before the API stops its job.
        monitor_interval_seconds: how often the API checks cancellations and vanished jobs.
        max_resumes: how many times a sweep whose job vanished is resubmitted.
        warm_drivers: standby sweep jobs kept started and waiting while no sweep runs, so a
            submitted sweep skips the job's start-up (see :mod:`service.dispatch.standby`); 0 starts
            a job per sweep on demand.
    """

    model_config = SettingsConfigDict(env_prefix="SWEEPS_", extra="ignore")

    # repr=False: a PostgreSQL URL carries its password, and settings get logged.
    database_url: str = Field(default_factory=_default_database_url, repr=False)
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
    warm_drivers: int = Field(1, ge=0, le=16)
    db_patience_seconds: float = Field(300.0, gt=0)
    heartbeat_seconds: float = Field(5.0, gt=0)
    stuck_after_seconds: float = Field(120.0, gt=0)
    ray_grace_seconds: float = Field(300.0, gt=0)
    tracking_backoff_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _fill_links(self) -> Settings:
        if self.mlflow_ui_url is None:
            self.mlflow_ui_url = self.mlflow_tracking_uri
        if self.public_url is None:
            self.public_url = f"http://{self.host}:{self.port}"
        return self

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
            if problems:
                raise ValueError(
                    f"refusing to start in production: {'; '.join(problems)}. Generate each "
                    "with `openssl rand -hex 32`, or set SWEEPS_ENV=development for a local run"
                )
        if self.api_token is None and not _is_loopback(self.host):
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

    def job_env(self) -> dict[str, str]:
        """What a sweep job needs to rebuild these settings (never the API token)."""
        return {
            "SWEEPS_DATABASE_URL": self.database_url,
            "SWEEPS_STORAGE_PATH": self.storage_path,
            "SWEEPS_RAY_ADDRESS": self.ray_address,
            "SWEEPS_DB_PATIENCE_SECONDS": str(self.db_patience_seconds),
            "SWEEPS_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
        }


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit ``overrides`` on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
