"""What one request and one client may cost: bodies, rates, held polls, open sweeps, a sweep's
budget and resources, numbers past what the databases store. Each limit answers with a clear
4xx, never a 5xx, against the real API (in this process, or a uvicorn process where the wire
matters), a real SQLite database and the session's real Ray cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service import store
from service.api.app import create_app
from service.cli.client import SweepsClient
from service.cli.stack import free_port
from service.config import Settings
from service.store.db import session_scope
from tests.service.helpers import Api, make_settings
from tests.specs import digits_body
from workers.spec import SweepSpec


def client_for(settings: Settings) -> TestClient:
    assert settings.api_token is not None
    token = settings.api_token.get_secret_value()
    return TestClient(create_app(settings, background=False), headers=auth(token))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Settings:
    return make_settings(tmp_path, ray_cluster, mlflow_server)


def detail(r: httpx.Response) -> Any:
    return r.json()["detail"]


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[Api]:
    """A uvicorn API with a 64 KiB body limit (where reading from the wire matters)."""
    port = free_port()
    small = settings.model_copy(
        update={"max_body_bytes": 64 << 10, "port": port, "public_url": f"http://127.0.0.1:{port}"}
    )
    api = Api(small, tmp_path / "api.log")
    api.start()
    yield api
    api.stop()


def test_a_body_past_the_limit_is_refused_413_before_it_is_read_whole(served: Api) -> None:
    big = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    declared = served.http.post(
        "/sweeps", content=big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and "SWEEPS_MAX_BODY_BYTES" in detail(declared)

    sent: list[int] = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for i in range(256):
            sent.append(i)
            yield b" " * (16 << 10)

    try:
        chunked = served.http.post("/sweeps", content=chunks())
        assert chunked.status_code == 413, chunked.text
    except httpx.HTTPError:  # the server answered and closed before the client finished
        pass
    assert served.http.get("/healthz").status_code == 200
    assert served.http.get("/sweeps").json()["count"] == 0


def test_a_client_past_the_rate_is_answered_429_with_retry_after(settings: Settings) -> None:
    with client_for(settings.model_copy(update={"rate_limit": "5/minute"})) as c:
        assert [c.get("/sweeps").status_code for _ in range(5)] == [200] * 5
        refused = c.get("/sweeps")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "SWEEPS_RATE_LIMIT" in detail(refused)
        assert c.get("/healthz").status_code == 200  # probes are never limited
        stranger = c.get("/sweeps", headers=auth("another-token"))  # its own budget: 401
        assert stranger.status_code == 401


def test_the_cli_client_waits_out_the_rate_limit_on_reads(
    settings: Settings, tmp_path: Path
) -> None:
    """``sweeps report`` and the lecture read every trial: past the rate they wait, not fail."""
    port = free_port()
    limited = settings.model_copy(
        update={"rate_limit": "5/second", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    )
    api = Api(limited, tmp_path / "api.log")
    api.start()
    try:
        assert limited.api_token is not None
        client = SweepsClient(limited.api_url, limited.api_token.get_secret_value())
        started = time.monotonic()
        assert [client.list()["count"] for _ in range(12)] == [0] * 12
        assert time.monotonic() - started >= 1.0  # 12 reads at 5 a second: waited, not refused
    finally:
        api.stop()


def test_long_polls_past_the_clients_limit_are_refused_429(settings: Settings) -> None:
    with client_for(settings.model_copy(update={"max_held_polls": 1})) as c:
        sweep_id = new_sweep(c)
        held = threading.Thread(target=lambda: c.get(f"/sweeps/{sweep_id}", params={"wait": 3}))
        held.start()
        time.sleep(1.0)
        second = c.get(f"/sweeps/{sweep_id}", params={"wait": 3})
        held.join()
        assert second.status_code == 429 and "SWEEPS_MAX_HELD_POLLS" in detail(second)
        assert c.get(f"/sweeps/{sweep_id}", params={"wait": 0.2}).status_code == 200  # freed


def new_sweep(c: TestClient) -> int:
    factory = c.app.state.session_factory  # type: ignore[attr-defined]
    with session_scope(factory) as session:
        sweep, _ = store.create_sweep(session, SweepSpec.model_validate(digits_body({"seed": 1})))
        session.flush()
        return sweep.id


def test_a_new_sweep_past_the_open_sweeps_limit_is_refused_429(settings: Settings) -> None:
    with client_for(settings.model_copy(update={"max_open_sweeps": 1})) as c:
        new_sweep(c)  # open, and the only one allowed
        refused = c.post("/sweeps", json=digits_body({"optim.lr": [0.1]}))
        assert refused.status_code == 429 and "SWEEPS_MAX_OPEN_SWEEPS" in detail(refused)
        assert c.get("/sweeps").json()["count"] == 1


def test_a_sweep_past_its_budget_is_refused_422_naming_the_field(settings: Settings) -> None:
    with client_for(settings.model_copy(update={"max_trial_epochs": 10})) as c:
        grid = c.post(
            "/sweeps", json=digits_body({"optim.lr": [0.1, 0.2, 0.3, 0.4]}, method="grid")
        )
        sampled = c.post("/sweeps", json=digits_body({"optim.lr": [0.1, 0.2]}, max_trials=20))
    assert grid.status_code == sampled.status_code == 422
    (g,), (s,) = detail(grid), detail(sampled)
    assert g["field"] == "parameters" and "4 trials x 3 epochs = 12" in g["message"]
    assert s["field"] == "max_trials" and "SWEEPS_MAX_TRIAL_EPOCHS" in s["message"]


def test_a_trial_no_node_can_hold_is_refused_422_naming_the_largest_node(
    settings: Settings,
) -> None:
    with client_for(settings) as c:
        body = digits_body({"optim.lr": [0.1]}, resources_per_trial={"cpu": 64})
        r = c.post("/sweeps", json=body)
        assert c.get("/sweeps").json()["count"] == 0
    assert r.status_code == 422
    (item,) = detail(r)
    assert item["field"] == "resources_per_trial"
    assert "cpu=64" in item["message"] and "largest node" in item["message"]
    assert "CPU=4" in item["message"]  # the session's cluster: one node of 4 CPUs


@pytest.mark.parametrize(
    "path",
    [
        "/sweeps/99999999999999999999",
        "/sweeps/2147483648",
        "/sweeps/1/trials/99999999999999999999",
        "/sweeps?offset=1099511627776",
        "/sweeps/1/trials?offset=-1",
    ],
)
def test_numbers_past_what_the_databases_store_are_422(settings: Settings, path: str) -> None:
    with client_for(settings) as c:
        assert new_sweep(c) == 1  # so that a 404 cannot answer first
        assert c.get(path).status_code == 422


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"seed": {"distribution": "int_uniform", "min": 0, "max": 1e300}}, "parameters.seed"),
        (
            {"optim.lr": {"distribution": "uniform", "min": 0.1, "max": 1e308}},
            "parameters.optim.lr",
        ),
        ({"seed": {"distribution": "int_uniform", "min": -1e308, "max": 0}}, "parameters.seed"),
        ({"model.groups": [10**30, 2]}, "parameters.model.groups"),
    ],
)
def test_numbers_that_would_overflow_are_422_naming_the_field(
    settings: Settings, parameters: dict[str, Any], field: str
) -> None:
    with client_for(settings) as c:
        started = time.monotonic()
        r = c.post("/sweeps", json=digits_body(parameters))
        assert time.monotonic() - started < 1
    assert r.status_code == 422, r.text
    assert any(d["field"] == field for d in detail(r)), detail(r)


def test_a_reused_key_with_another_body_is_409_and_never_echoes_the_key(settings: Settings) -> None:
    key = "secret-looking-key-1234"
    with client_for(settings) as c:
        first = c.post(
            "/sweeps", json=digits_body({"optim.lr": [0.1]}), headers={"Idempotency-Key": key}
        )
        other = c.post(
            "/sweeps", json=digits_body({"optim.lr": [0.2]}), headers={"Idempotency-Key": key}
        )
    assert first.status_code == 201
    assert other.status_code == 409 and key not in other.text
