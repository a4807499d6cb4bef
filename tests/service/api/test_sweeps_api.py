"""The HTTP API against a real Ray cluster and MLflow server, with a real SQLite file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import store
from service.api.app import create_app
from service.cli.client import SweepsClient
from service.cli.main import watch
from service.config import Settings
from service.dispatch.tracking import TrackingSender
from service.job.sink import DatabaseSink
from service.store.db import session_scope
from tests.service.helpers import (
    make_settings,
    mlflow_runs,
    strict_json,
    wait_for,
    wait_tracked,
)
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES, TrialUpdate, best_number
from workers.spec import GRID_LIMIT, SweepSpec
from workers.tracking import MlflowRuns


@pytest.fixture
def settings(tmp_path: Path, ray_cluster: Any, mlflow_server: Any) -> Settings:
    return make_settings(tmp_path, ray_cluster, mlflow_server)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=auth(settings)) as c:
        yield c


def auth(settings: Settings) -> dict[str, str]:
    assert settings.api_token is not None
    return {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}


def sweep_of(client: TestClient, sweep_id: int) -> dict[str, Any]:
    return sweep_of_path(client, f"/sweeps/{sweep_id}")


def sweep_of_path(client: TestClient, path: str) -> dict[str, Any]:
    r = client.get(path)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = strict_json(r.text)
    return body


def wait_final(client: TestClient, sweep_id: int, timeout: float) -> dict[str, Any]:
    done = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
    result: dict[str, Any] = wait_for(lambda: sweep_of(client, sweep_id), done, timeout, "the end")
    return result


def trials_of(client: TestClient, sweep_id: int) -> list[dict[str, Any]]:
    page = strict_json(client.get(f"/sweeps/{sweep_id}/trials").text)
    details = [client.get(f"/sweeps/{sweep_id}/trials/{t['number']}") for t in page["data"]]
    return [strict_json(d.text) for d in details]


NESTEROV = {"optim.nesterov": True, "optim.momentum": 0.0}
BIG_GRID = {"optim.batch_size": list(range(1, 40)), "optim.lr": [0.01 * i for i in range(1, 40)]}
INVALID = [
    ("unknown-key", digits_body({"optim.lr": [0.1]}, epochz=3), "epochz", "did you mean epochs"),
    ("unknown-setting", digits_body({"optim.lrr": [0.1]}), "parameters", "did you mean optim.lr"),
    ("range", digits_body({"optim.lr": [0.1]}, epochs=0), "epochs", "greater than or equal to 1"),
    (
        "value-range",
        digits_body({"optim.lr": [20.0]}),
        "parameters.optim.lr",
        "less than or equal to 10",
    ),
    ("empty-space", digits_body({}), "parameters", "search space is empty"),
    ("nesterov", digits_body(NESTEROV), "parameters", "needs optim.momentum > 0"),
    ("groups", digits_body({"model.norm": "group", "model.groups": 3}), "parameters", "divide"),
    ("grid-limit", digits_body(BIG_GRID, method="grid"), "parameters", f"limit of {GRID_LIMIT}"),
    ("param-form", digits_body({"optim.lr": {"valuez": 1}}), "parameters.optim.lr", "keys: valuez"),
]


@pytest.mark.parametrize(("case", "body", "field", "fix"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_sweeps_are_refused_with_the_field_and_the_fix(
    client: TestClient, case: str, body: dict[str, Any], field: str, fix: str
) -> None:
    r = client.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    detail = strict_json(r.text)["detail"]
    assert any(d["field"] == field and fix in d["message"] for d in detail), detail
    assert all(d["loc"][0] == "body" for d in detail)
    assert client.get("/sweeps").json()["count"] == 0  # nothing stored


def test_nan_in_a_request_is_refused_and_never_echoed(client: TestClient) -> None:
    raw = '{"parameters": {"optim.lr": {"distribution": "uniform", "min": NaN, "max": 1}}}'
    r = client.post("/sweeps", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    detail = strict_json(r.text)["detail"]
    assert detail[0]["field"] == "parameters.optim.lr.min"


def test_unknown_sweep_and_trial_are_404(client: TestClient) -> None:
    assert client.get("/sweeps/999").status_code == 404
    assert client.get("/sweeps/999/trials/1").status_code == 404
    assert "does not exist" in client.post("/sweeps/999/cancel").json()["detail"]


def test_resubmission_with_an_idempotency_key_returns_the_same_sweep(client: TestClient) -> None:
    body = digits_body({"optim.lr": [0.05]}, epochs=1)
    first = client.post("/sweeps", json=body, headers={"Idempotency-Key": "abc"})
    again = client.post("/sweeps", json=body, headers={"Idempotency-Key": "abc"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["location"] == first.json()["links"]["self"]
    other = client.post("/sweeps", json=body | {"epochs": 2}, headers={"Idempotency-Key": "abc"})
    assert other.status_code == 409
    assert "different request body" in other.json()["detail"]
    assert client.get("/sweeps").json()["count"] == 1
    wait_final(client, first.json()["id"], timeout=240)


def test_list_is_paginated_and_filtered_by_status(client: TestClient) -> None:
    factory = client.app.state.session_factory  # type: ignore[attr-defined]

    spec = SweepSpec.model_validate(digits_body({"optim.lr": [0.1]}))
    with session_scope(factory) as session:
        made = [store.create_sweep(session, spec)[0] for _ in range(5)]
        session.flush()
        for sweep in made[:2]:
            store.finish_sweep(session, sweep.id, "failed", "test")
            sweep.ray_job_id = "none"
        for sweep in made[2:]:
            store.finish_sweep(session, sweep.id, "cancelled", "test")
    page = client.get("/sweeps", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 5 and [s["id"] for s in page["data"]] == [4, 3]
    failed = client.get("/sweeps", params={"status": "failed"}).json()
    assert failed["count"] == 2 and {s["id"] for s in failed["data"]} == {1, 2}
    assert client.get("/sweeps", params={"status": "nope"}).status_code == 422


def test_reading_sweeps_never_validates_a_stored_spec(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lists, details and long polls answer from the stored columns (planned trials, metric)."""
    with TestClient(create_app(settings, background=False), headers=auth(settings)) as client:
        _read_sweeps_without_validating(client, monkeypatch)


def _read_sweeps_without_validating(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    factory = client.app.state.session_factory  # type: ignore[attr-defined]
    grid = {"optim.lr": [0.01 * i for i in range(1, 33)], "seed": list(range(20))}
    spec = SweepSpec.model_validate(
        digits_body(grid, method="grid", metric={"name": "val_loss", "goal": "minimize"})
    )
    with session_scope(factory) as session:
        made = [store.create_sweep(session, spec)[0] for _ in range(3)]
        session.flush()
        ids = [sweep.id for sweep in made]
        sink = DatabaseSink(factory, ids[0])
    sink.trial_updated(TrialUpdate(number=1, status="running", params={"optim.lr": 0.01}))
    sink.epoch_reported(1, 1, {"val_loss": 0.5, "val_accuracy": 0.9})
    validated: list[SweepSpec] = []
    check = SweepSpec._check_configs
    monkeypatch.setattr(
        SweepSpec, "_check_configs", lambda self: validated.append(self) or check(self)
    )

    listed = client.get("/sweeps").json()
    detail = client.get(f"/sweeps/{ids[0]}", params={"wait": 0.3, "version": "old"}).json()
    client.get(f"/sweeps/{ids[1]}", params={"wait": 0.2})
    client.get(f"/sweeps/{ids[0]}/trials")
    assert validated == []
    assert [s["planned_trials"] for s in listed["data"]] == [640] * 3
    assert detail["best_trial"]["metric"] == "val_loss"
    assert detail["best_trial"]["goal"] == "minimize"
    assert detail["best_trial"]["value"] == 0.5


LR = {"optim.lr": [0.1]}


@pytest.fixture
def quiet(settings: Settings) -> Iterator[tuple[TestClient, DatabaseSink]]:
    """An API without dispatcher loop, one stored sweep, and the sink a sweep job writes with."""
    with TestClient(create_app(settings, background=False), headers=auth(settings)) as c:
        factory = c.app.state.session_factory  # type: ignore[attr-defined]
        with session_scope(factory) as session:
            sweep, _ = store.create_sweep(session, SweepSpec.model_validate(digits_body(LR)))
            session.flush()
        yield c, DatabaseSink(factory, sweep.id)


def later(*writes: Callable[[], object], every: float = 0.5) -> threading.Thread:
    """Run ``writes`` on a thread, one every ``every`` seconds, the first after one period."""

    def run() -> None:
        for write in writes:
            time.sleep(every)
            write()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_held_get_answers_when_the_sweep_changes_or_ends(
    quiet: tuple[TestClient, DatabaseSink],
) -> None:
    c, sink = quiet
    path = f"/sweeps/{sink.sweep_id}"

    def held(params: dict[str, Any]) -> tuple[dict[str, Any], float]:
        t0 = time.monotonic()
        r = c.get(path, params=params)
        assert r.status_code == 200, r.text
        return strict_json(r.text), time.monotonic() - t0

    first = sweep_of(c, sink.sweep_id)
    # nothing changes: held for the whole wait, then the same sweep and version
    same, waited = held({"wait": 0.5, "version": first["version"]})
    assert waited >= 0.5 and same["version"] == first["version"]
    # a trial starts while the request is held: answered with it, long before the wait ends
    writer = later(lambda: sink.trial_updated(TrialUpdate(1, "running")))
    news, waited = held({"wait": 30, "version": first["version"]})
    writer.join()
    assert waited < 20 and news["version"] != first["version"]
    assert news["trial_counts"]["running"] == 1
    # without a version: answered when the sweep is final, not on the next change
    writer = later(lambda: sink.epoch_reported(1, 1, {"val_accuracy": 0.5}))
    cut, waited = held({"wait": 1.5})
    writer.join()
    assert waited >= 1.5 and cut["status"] == "pending" and cut["best_trial"]["value"] == 0.5
    writer = later(lambda: sink.sweep_ended("completed", "done", None))
    final, waited = held({"wait": 30})
    writer.join()
    assert waited < 20 and final["status"] == "completed"
    assert final["trial_counts"]["running"] == 0  # the open trial was closed with it
    # bad waits are refused, naming the field; an unknown sweep is 404 even when held
    for params in ({"wait": 61}, {"wait": -1}, {"wait": 1, "version": ""}):
        r = c.get(path, params=params)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] in {"wait", "version"}
    assert c.get("/sweeps/999", params={"wait": 1}).status_code == 404


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")  # TestClient
def test_sweeps_watch_follows_a_sweep_to_its_end_asking_only_on_news(
    quiet: tuple[TestClient, DatabaseSink], capsys: pytest.CaptureFixture[str]
) -> None:
    c, sink = quiet
    api = SweepsClient("http://testserver")
    api.http = c
    asked: list[str | None] = []
    get = api.get

    def counted(sweep_id: int, wait: float = 0.0, version: str | None = None) -> dict[str, Any]:
        asked.append(version)
        return get(sweep_id, wait=wait, version=version)

    api.get = counted  # type: ignore[method-assign]
    writes = [
        lambda: sink.sweep_started("/tmp/exp"),
        lambda: sink.trial_updated(TrialUpdate(1, "running", LR)),
        lambda: sink.epoch_reported(1, 1, {"val_accuracy": 0.5}),
        lambda: sink.epoch_reported(1, 2, {"val_accuracy": 0.75}),
        lambda: sink.trial_updated(TrialUpdate(1, "completed")),
        lambda: sink.sweep_ended("completed", "", None),
    ]
    writer = later(*writes, every=1.0)
    assert watch(api, sink.sweep_id, tracked_wait_s=0.0) == 0  # no tracking sender here
    writer.join()
    # one question to start, then one per write at most: held requests, no polling
    assert asked[0] is None and len(asked) <= 1 + len(writes)
    out = capsys.readouterr().out
    assert "best trial #1: val_accuracy=0.7500 at epoch 2" in out


def test_the_api_the_stored_best_and_mlflow_all_name_the_drivers_best_trial(
    quiet: tuple[TestClient, DatabaseSink], settings: Settings
) -> None:
    """A trial that reported the top value and then failed is the best nowhere, and a tie
    goes to the lower number: what :func:`workers.events.best_number` says, the driver's rule."""
    c, sink = quiet
    sink.sweep_started("/tmp/exp")
    for number, acc in [(4, 0.9), (1, 0.99), (3, 0.7), (2, 0.9)]:  # 4 ties 2, reported first
        sink.trial_updated(TrialUpdate(number, "running", {"optim.lr": number / 10}))
        sink.epoch_reported(number, 1, {"val_accuracy": acc, "val_loss": 1 - acc})
    assert sweep_of(c, sink.sweep_id)["best_trial"]["number"] == 1  # the top value, running
    sink.trial_updated(TrialUpdate(1, "failed", message="worker died 3 times"))
    for number, status in [(2, "completed"), (3, "stopped"), (4, "completed")]:
        sink.trial_updated(TrialUpdate(number, status))  # type: ignore[arg-type]
    drivers = best_number(
        ((t.number, t.status, t.value) for t in sink.trials("val_accuracy")), "max"
    )
    assert drivers == 2
    sink.sweep_ended("completed", "4 trials", drivers)

    best = sweep_of(c, sink.sweep_id)["best_trial"]
    assert (best["number"], best["key"], best["value"], best["epoch"]) == (2, "trial-00002", 0.9, 1)
    assert best["params"] == {"optim.lr": 0.2}
    factory = c.app.state.session_factory  # type: ignore[attr-defined]
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sink.sweep_id)
        assert sweep.best_trial_key == "trial-00002"
    TrackingSender(factory, MlflowRuns(settings.mlflow_tracking_uri)).deliver(sink.sweep_id)
    _, (parent,), children = mlflow_runs(settings.mlflow_tracking_uri, sweep.uid)
    run_of = {child.data.tags["sweeps.trial_key"]: child.info.run_id for child in children}
    assert parent.data.tags["sweeps.best_trial_key"] == "trial-00002"
    assert parent.data.tags["sweeps.best_run_id"] == run_of["trial-00002"]
    assert parent.data.tags["best.optim.lr"] == "0.2"
    assert parent.data.metrics["best_val_accuracy"] == 0.9


def test_readiness_names_the_dependency_that_is_down(settings: Settings) -> None:
    with TestClient(create_app(settings, background=False), headers=auth(settings)) as c:
        ok = c.get("/readyz")
        assert ok.status_code == 200, ok.text
    broken = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    with TestClient(create_app(broken, background=False), headers=auth(settings)) as c:
        r = c.get("/readyz")
        assert c.get("/healthz").status_code == 200
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["mlflow"].startswith("unreachable") and checks["ray"] == "ok"


@pytest.mark.slow
def test_a_sweep_runs_to_the_end_with_every_trial_curve_and_mlflow_runs(
    settings: Settings, mlflow_server: Any
) -> None:
    warm = settings.model_copy(update={"warm_drivers": 1})  # the product's default
    with TestClient(create_app(warm), headers=auth(settings)) as client:
        run_a_sweep_to_the_end(client, mlflow_server)


def run_a_sweep_to_the_end(client: TestClient, mlflow_server: Any) -> None:
    body = digits_body({"optim.lr": [0.02, 0.1], "model.norm": ["none", "batch"]}, method="grid")
    created = client.post("/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]

    wait_final(client, sweep_id, timeout=420)
    sweep = wait_tracked(lambda p: sweep_of_path(client, p), sweep_id)
    assert sweep["links"]["mlflow_experiment"].startswith(mlflow_server.uri)
    assert sweep["status"] == "completed", sweep
    assert sweep["trial_counts"]["completed"] == 4 == sweep["trial_counts"]["total"]
    trials = trials_of(client, sweep_id)
    assert len(trials) == 4
    for trial in trials:
        assert trial["status"] == "completed"
        assert [p["epoch"] for p in trial["curve"]] == [1, 2, 3]
        assert set(trial["params"]) == {"optim.lr", "model.norm"}
    best = sweep["best_trial"]
    accs = {t["number"]: t["curve"][-1]["metrics"]["val_accuracy"] for t in trials}
    assert best["value"] == max(accs.values()) and accs[best["number"]] == best["value"]
    mlflow, parents, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sweep_parent_id(sweep) == parents[0].info.run_id
    assert sorted(c.info.run_id for c in children) == sorted(t["mlflow_run_id"] for t in trials)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = mlflow.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]
    done = client.get(f"/sweeps/{sweep_id}/trials", params={"status": "completed", "limit": 3})
    assert done.json()["count"] == 4 and len(done.json()["data"]) == 3


def sweep_parent_id(sweep: dict[str, Any]) -> str:
    """The parent run's id, from the sweep's link to its MLflow page."""
    page = str(sweep["links"]["mlflow_run"]).split("?", 1)[0]
    return page.rsplit("/", 1)[-1]


@pytest.mark.slow
def test_cancel_marks_trials_cancelled_and_their_runs_killed(
    client: TestClient, mlflow_server: Any
) -> None:
    body = digits_body({"optim.lr": [0.01, 0.02, 0.05, 0.1]}, method="grid", epochs=200)
    sweep_id = client.post("/sweeps", json=body).json()["id"]
    wait_for(
        lambda: trials_of(client, sweep_id),
        lambda ts: any(t["curve"] for t in ts),
        240,
        "a first epoch",
    )
    answer = client.post(f"/sweeps/{sweep_id}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelling"
    sweep = wait_final(client, sweep_id, timeout=30)
    assert sweep["status"] == "cancelled"
    trials = trials_of(client, sweep_id)
    assert trials and {t["status"] for t in trials} == {"cancelled"}
    assert client.post(f"/sweeps/{sweep_id}/cancel").status_code == 200  # idempotent

    wait_tracked(lambda p: sweep_of_path(client, p), sweep_id)
    trials = trials_of(client, sweep_id)
    _, parents, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    started = [t for t in trials if t["mlflow_run_id"]]
    assert len(children) == len(started) > 0
    assert {c.info.status for c in children} == {"KILLED"}
    assert parents[0].info.status == "KILLED"


@pytest.mark.slow
def test_a_diverging_trial_is_reported_diverged_and_never_best(client: TestClient) -> None:
    body = digits_body(
        {"optim.lr": [0.05, 10.0]},
        method="grid",
        epochs=2,
        model={"arch": "mlp", "width": 256, "depth": 3},
    )
    body["parameters"] |= {"optim.momentum": 0.99, "optim.batch_size": 16}
    sweep_id = client.post("/sweeps", json=body).json()["id"]
    sweep = wait_final(client, sweep_id, timeout=300)
    trials = {t["params"]["optim.lr"]: t for t in trials_of(client, sweep_id)}
    assert trials[10.0]["status"] == "diverged", trials[10.0]
    assert "non-finite" in trials[10.0]["message"] or "not finite" in trials[10.0]["message"]
    assert trials[0.05]["status"] == "completed"
    assert sweep["best_trial"]["params"]["optim.lr"] == 0.05
