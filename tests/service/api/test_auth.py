"""Access control: every route but /healthz needs the API token; production refuses weak
secrets; secrets never show in the settings' text forms or in what jobs receive."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from starlette.routing import Route

from service.api.app import create_app
from service.config import Settings, write_database_url_file

TOKEN = secrets.token_hex(32)
RAY_TOKEN = secrets.token_hex(32)
PUBLIC = {"/healthz"}


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path}/sweeps.db",
        "storage_path": str(tmp_path / "tune"),
        "ray_dashboard_url": "http://127.0.0.1:9",  # nothing listens: auth must decide first
        "mlflow_tracking_uri": "http://127.0.0.1:9",
        "ray_auth_token": RAY_TOKEN,
        "api_token": TOKEN,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(_settings(tmp_path), background=False)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _calls(app: FastAPI) -> set[tuple[str, str]]:
    """(method, concrete path) for every route of ``app``: the API's operations, read from its
    OpenAPI schema (FastAPI includes routers lazily, so ``app.routes`` holds them unexpanded),
    and the plain routes (the schema and the docs pages)."""
    calls = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    for route in app.routes:
        if isinstance(route, Route):
            calls |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return {(method, re.sub(r"\{[^}]+\}", "1", path)) for method, path in calls}


def _protected(app: FastAPI) -> list[tuple[str, str]]:
    calls = sorted(c for c in _calls(app) if c[1] not in PUBLIC)
    assert len(calls) >= 8, calls  # the sweeps routes, /readyz, the docs and the schema
    return calls


WRONG = [
    pytest.param({}, id="no-header"),
    pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token-plus-one"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="token-minus-one"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong-scheme"),
    pytest.param({"Authorization": TOKEN}, id="no-scheme"),
    pytest.param({"Authorization": "Bearer "}, id="empty-token"),
]


@pytest.mark.parametrize("headers", WRONG)
def test_every_route_but_healthz_answers_401_without_the_token(
    app: FastAPI, client: TestClient, headers: dict[str, str]
) -> None:
    for method, path in _protected(app):
        resp = client.request(method, path, headers=headers)
        assert resp.status_code == 401, (method, path, resp.status_code)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in resp.text


def test_every_route_accepts_the_token(app: FastAPI, client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in _protected(app):
        resp = client.request(method, path, headers=auth)
        assert resp.status_code != 401, (method, path)
    assert client.get("/openapi.json", headers=auth).status_code == 200


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    resp = client.get("/openapi.json", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status_code == 200


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_without_an_api_token_local_mode_is_open(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, api_token=None), background=False)
    with TestClient(app) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/sweeps/1").status_code != 401


def test_without_an_api_token_the_api_must_bind_to_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"SWEEPS_API_TOKEN, or bind to 127\.0\.0\.1"):
        _settings(tmp_path, api_token=None, host="0.0.0.0")
    assert _settings(tmp_path, api_token=None, host="::1").api_token is None


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("api_token", None, "SWEEPS_API_TOKEN is not set"),
        ("api_token", "change-me", "SWEEPS_API_TOKEN is still the .env.example placeholder"),
        ("ray_auth_token", None, "SWEEPS_RAY_AUTH_TOKEN is not set"),
        ("ray_auth_token", "CHANGE-ME-please-0123456789", "placeholder"),
        ("ray_auth_token", "abc123", "SWEEPS_RAY_AUTH_TOKEN is shorter than 16 characters"),
    ],
)
def test_production_refuses_to_start_with_a_missing_or_weak_secret(
    tmp_path: Path, field: str, value: str | None, problem: str
) -> None:
    with pytest.raises(ValidationError, match="refusing to start in production") as err:
        _settings(tmp_path, env="production", **{field: value})
    assert problem in str(err.value)


def test_production_starts_with_real_secrets_and_development_with_placeholders(
    tmp_path: Path,
) -> None:
    assert _settings(tmp_path, env="production").env == "production"
    dev = _settings(tmp_path, env="development", api_token="change-me", ray_auth_token=None)
    assert dev.api_token == SecretStr("change-me")


def test_production_check_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPS_ENV", "production")
    monkeypatch.setenv("SWEEPS_API_TOKEN", "change-me")
    monkeypatch.setenv("SWEEPS_RAY_AUTH_TOKEN", RAY_TOKEN)
    with pytest.raises(ValidationError, match=r"SWEEPS_API_TOKEN is still the \.env\.example"):
        Settings()


def test_secrets_never_appear_in_settings_text_or_job_environment(tmp_path: Path) -> None:
    settings = _settings(tmp_path, env="production")
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.job_env())]
    for text in shown:
        assert TOKEN not in text and RAY_TOKEN not in text


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("change-me", "is still the .env.example placeholder"),
        ("short", "is shorter than 16 characters"),
        ("", "is not set"),
    ],
)
def test_production_refuses_a_placeholder_database_password(
    tmp_path: Path, password: str, problem: str
) -> None:
    url = f"postgresql+psycopg://sweeps:{password}@db:5432/sweeps"
    with pytest.raises(ValidationError) as caught:
        _settings(tmp_path, env="production", database_url=url)
    assert f"the password in SWEEPS_DATABASE_URL {problem}" in caught.value.errors()[0]["msg"]
    assert _settings(tmp_path, env="development", database_url=url).database_url == url


def test_jobs_get_the_database_url_through_a_file_only_the_user_reads(tmp_path: Path) -> None:
    password = secrets.token_hex(16)
    url = f"postgresql+psycopg://sweeps:{password}@db:5432/sweeps"
    settings = _settings(tmp_path, database_url=url, database_url_file=tmp_path / "s" / "db-url")
    path = write_database_url_file(settings)
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() == url

    env = settings.job_env()
    assert password not in str(env) and env["SWEEPS_DATABASE_URL_FILE"] == str(path)
    job_settings = Settings(_env_file=None, database_url_file=path)  # type: ignore[call-arg]
    assert job_settings.database_url == url  # what the job's settings read
