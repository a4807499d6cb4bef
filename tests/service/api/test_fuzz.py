"""Any request, any client: schemathesis generates requests from the served OpenAPI document,
with the token and without, and the API must never answer 5xx nor break its own schema.

The API runs for real (its lifespan, a real SQLite database); Ray and MLflow are addresses where
nothing listens, so the sweeps the fuzzer creates are stored but never trained, and readiness
says why. Generation is seeded (derandomized) and bounded: at least 1,000 requests in all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from service.api.app import create_app
from service.cli.stack import free_port
from tests.service.helpers import make_settings

pytestmark = pytest.mark.slow
TOKEN = "fuzz-token-for-the-schema-tests"
CALLS: Counter[str] = Counter()
"""Requests made, by whether they carried the token (checked by the last test)."""
EXAMPLES = 150
"""Generated cases per operation and mode, with the token (a quarter of it without)."""


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = SimpleNamespace(
        address=f"127.0.0.1:{free_port()}", dashboard_url=nowhere, token="t", uri=nowhere
    )
    config = make_settings(
        tmp_path_factory.mktemp("fuzz"),
        down,
        down,
        api_token=TOKEN,
        rate_limit="1000000/minute",
        max_wait_seconds=0.2,  # a generated ?wait= is held briefly
    )
    app = create_app(config, background=False)
    with TestClient(app):  # runs the lifespan: the schema migrated, the dispatcher built
        yield app


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi(
        "/openapi.json", fuzzed_app, headers={"Authorization": f"Bearer {TOKEN}"}
    )


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
"""What every answer must satisfy: no 5xx, a declared status, a declared body. (Whether the
schema's every valid request is also accepted is another matter: semantic rules, like groups
dividing the width, reject requests no JSON schema can tell apart.)"""
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz(
    schema: Any, who: str, headers: dict[str, str], examples: int, mode: GenerationMode
) -> None:
    """Every operation of ``schema``, ``examples`` cases each (valid ones, or ``NEGATIVE``:
    ones that break the schema), sent with ``headers``: none may get a 5xx, every answer must
    match the schema (its status declared, its body)."""
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/readyz":
            continue  # it takes no input, and answers 503 here by design (Ray, MLflow are down)

        @settings(FUZZ, max_examples=examples)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            CALLS[who] += 1
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            assert response.status_code < 500, response.text

        try:
            check()
        except Unsatisfiable:
            # Only where no input can break the schema: an operation without parameters or body.
            assert mode == GenerationMode.NEGATIVE, operation.path
            assert not list(operation.iter_parameters()), operation.path


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_no_request_with_the_token_gets_a_5xx_or_breaks_the_schema(
    api_schema: Any, mode: GenerationMode
) -> None:
    fuzz(api_schema, "token", {"Authorization": f"Bearer {TOKEN}"}, EXAMPLES, mode)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_no_request_without_the_token_gets_a_5xx_or_breaks_the_schema(
    api_schema: Any, mode: GenerationMode
) -> None:
    fuzz(api_schema, "none", {}, EXAMPLES // 4, mode)


def test_the_fuzzers_ran_at_least_a_thousand_requests() -> None:
    """(Runs last: the module's tests run in order.)"""
    print(f"schemathesis requests by token: {dict(CALLS)}")
    assert sum(CALLS.values()) >= 1000, CALLS
    assert CALLS["none"] > 0 and CALLS["token"] > 0
