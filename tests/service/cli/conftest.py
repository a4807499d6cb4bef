"""The CLI's client on an in-process API (real Ray, MLflow and SQLite behind it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli.client import SweepsClient
from tests.service.helpers import make_settings


@pytest.fixture
def api(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Iterator[SweepsClient]:
    """A :class:`SweepsClient` whose requests go to the app in this process, with the token."""
    settings = make_settings(tmp_path, ray_cluster, mlflow_server)
    assert settings.api_token is not None
    headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    with TestClient(create_app(settings), headers=headers) as c:
        client = SweepsClient("http://testserver")
        client.http = c
        yield client
