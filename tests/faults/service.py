"""The service around a fault test, and what its pass criteria read: the database (through the
API) and MLflow's own records."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from tests.service.helpers import mlflow_runs, strict_json, wait_for
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES
from workers.tracking import OBJECTIVE, RUN_STATUS

SLOW_MODEL = {"arch": "mlp", "width": 256, "depth": 3}
"""A model whose epochs on digits take tens of milliseconds with batches of 32: trials that
train for seconds, long enough for a fault to land mid-sweep."""


def long_body(epochs: int, lrs: list[float], **kw: Any) -> dict[str, Any]:
    """A grid sweep over learning rates whose trials each train ``epochs`` slow epochs."""
    body = digits_body({"optim.lr": lrs, "optim.batch_size": 32}, method="grid", epochs=epochs)
    return body | {"model": SLOW_MODEL} | kw


class Service:
    """An API (in this process, or any base URL) seen the way a client sees it."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, path: str, **params: Any) -> Any:
        """The answer to ``GET path``, asked again after ``Retry-After`` while the API's rate
        limit answers 429 (the soak's verdict reads hundreds of sweeps)."""
        r = self.client.get(path, params=params)
        while r.status_code == 429:
            time.sleep(float(r.headers.get("Retry-After", "1")))
            r = self.client.get(path, params=params)
        assert r.status_code == 200, r.text
        return strict_json(r.text)

    def submit(self, body: dict[str, Any]) -> int:
        r = self.client.post("/sweeps", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def sweep(self, sweep_id: int) -> Any:
        return self.get(f"/sweeps/{sweep_id}")

    def trials(self, sweep_id: int) -> list[dict[str, Any]]:
        page = self.get(f"/sweeps/{sweep_id}/trials", limit=500)["data"]
        return [self.get(f"/sweeps/{sweep_id}/trials/{t['number']}") for t in page]

    def epochs(self, sweep_id: int) -> int:
        """Epochs stored of all the sweep's trials together."""
        page = self.get(f"/sweeps/{sweep_id}/trials", limit=500)["data"]
        return sum(t["epochs_done"] for t in page)

    def wait_epochs(self, sweep_id: int, at_least: int, timeout: float = 240) -> int:
        return int(
            wait_for(lambda: self.epochs(sweep_id), lambda n: n >= at_least, timeout, "epochs")
        )

    def wait_final(self, sweep_id: int, timeout: float) -> Any:
        final = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
        return wait_for(lambda: self.sweep(sweep_id), final, timeout, "the sweep's end")

    def wait_tracked(self, sweep_id: int, timeout: float = 120) -> Any:
        done = lambda s: s["mlflow_pending"] == 0  # noqa: E731
        return wait_for(lambda: self.sweep(sweep_id), done, timeout, "MLflow to catch up")


@contextlib.contextmanager
def in_process(settings: Settings) -> Iterator[Service]:
    """The API for ``settings`` in this process, with its monitor and tracking sender."""
    assert settings.api_token is not None
    headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
    with TestClient(create_app(settings), headers=headers) as client:
        yield Service(client)


def assert_curves_complete(trials: list[dict[str, Any]], epochs: int) -> None:
    """Every trial completed with epochs 1..``epochs``, each once, in the database."""
    for trial in trials:
        assert trial["status"] == "completed", trial
        assert [p["epoch"] for p in trial["curve"]] == list(range(1, epochs + 1)), trial["key"]


def assert_mlflow_matches(uri: str, sweep: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """MLflow holds what the database holds: one parent run closed with the sweep's outcome,
    one run per trial nested under it, closed with the trial's outcome, with its parameters,
    and every metric of every stored epoch at its step, once, with the stored value."""
    client, parents, children = mlflow_runs(uri, sweep["uid"])
    assert len(parents) == 1, parents
    parent = parents[0]
    assert parent.info.status == RUN_STATUS[sweep["status"]], parent.info
    assert parent.data.tags["sweeps.outcome"] == sweep["status"]
    by_key = {c.data.tags["sweeps.trial_key"]: c for c in children}
    assert len(children) == len(by_key) == len(trials), "one run per trial, no more"
    for trial in trials:
        run = by_key[trial["key"]]
        assert run.info.run_id == trial["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == RUN_STATUS[trial["status"]], (trial["key"], run.info.status)
        assert run.data.tags["sweeps.outcome"] == trial["status"]
        assert all(run.data.params[k] == str(v) for k, v in trial["params"].items())
        stored = {p["epoch"]: p["metrics"] for p in trial["curve"]}
        objective = sweep["spec"]["metric"]["name"]
        for metric in {m for p in trial["curve"] for m in p["metrics"]}:
            logged = [metric] + ([f"{OBJECTIVE}/{metric}"] if metric == objective else [])
            for key in logged:  # the sweep's metric also as the chart view's first section
                history = client.get_metric_history(run.info.run_id, key)
                steps = sorted(m.step for m in history)
                assert steps == sorted(e for e, m in stored.items() if metric in m), (key, steps)
                for point in history:
                    assert point.value == pytest.approx(stored[point.step][metric]), key


def eventually(check: Any, timeout: float, what: str) -> None:
    """Call ``check`` until it stops raising AssertionError; fail with its last one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not hold within {timeout:.0f} s") from None
            time.sleep(0.5)
