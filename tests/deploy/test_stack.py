"""The compose stack brought up for real: built without a registry or an index, started on a
generated .env, used over its published ports only, broken on purpose, taken down and up.

The tests run in file order on one stack (`make test-deploy`; `make test` deselects them).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from mlflow.entities import ViewType

from tests.deploy.stack import (
    HEALTHY_WITHIN,
    TEST_IMAGE,
    Stack,
    build_images,
    forked_trial_hosts,
    processes,
    run,
    trial_hosts,
)

# The first test also builds the images: from an engine without any, tens of minutes.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(3600)]

SWEEP_WITHIN = 900.0
FINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    build_images()
    s = Stack(tmp_path_factory.mktemp("deploy"))
    try:
        s.up("--scale", "ray-worker=2")
        yield s
    finally:
        s.teardown()
        run("docker", "image", "rm", f"{TEST_IMAGE}:cpu", check=False)


def submit(stack: Stack, name: str, trials: int, epochs: int) -> dict[str, Any]:
    body = {
        "name": name,
        "dataset": "digits",
        "epochs": epochs,
        "method": "random",
        "max_trials": trials,
        "max_concurrent": 4,
        "resources_per_trial": {"cpu": 1},
        "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.3}},
        "metric": {"name": "val_accuracy", "goal": "maximize"},
    }
    deadline = time.monotonic() + 120
    while True:
        r = stack.api.post("/sweeps", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        # Refused while no node that could hold a trial has joined yet: the API says so.
        if r.status_code != 422 or "than any node" not in r.text or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert r.status_code == 201, r.text
    return dict(r.json())


def sweep(stack: Stack, sweep_id: int) -> dict[str, Any]:
    for attempt in itertools.count():  # the API may be restarting: wait for it
        try:
            r = stack.api.get(f"/sweeps/{sweep_id}")
            r.raise_for_status()
            return dict(r.json())
        except httpx.HTTPError:
            if attempt > 60:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def wait_final(
    stack: Stack,
    sweep_id: int,
    watch: list[dict[str, Any]] | None = None,
    seen: set[str] | None = None,
    forked: set[str] | None = None,
) -> dict[str, Any]:
    """The sweep once final and MLflow has all of it; the containers of ``watch`` that ran
    trials meanwhile are added to ``seen``, those whose trial workers their node's zygote
    forked to ``forked``."""
    deadline = time.monotonic() + SWEEP_WITHIN
    while time.monotonic() < deadline:
        if watch is not None and seen is not None:
            seen |= trial_hosts(watch)
        if watch is not None and forked is not None:
            forked |= forked_trial_hosts(watch)
        s = sweep(stack, sweep_id)
        if s["status"] in FINAL and s["mlflow_pending"] == 0:
            return s
        time.sleep(1)
    raise AssertionError(f"sweep {sweep_id} not final: {sweep(stack, sweep_id)}")


def trials(stack: Stack, sweep_id: int) -> list[dict[str, Any]]:
    r = stack.api.get(f"/sweeps/{sweep_id}/trials")  # one page: at most 100
    r.raise_for_status()
    return list(r.json()["data"])


def assert_complete(stack: Stack, s: dict[str, Any]) -> list[dict[str, Any]]:
    """Every planned trial final, and MLflow's nested runs say the same, all closed."""
    assert s["status"] == "completed", s
    ts = trials(stack, s["id"])
    assert len(ts) == s["planned_trials"], ts
    assert all(t["status"] in {"completed", "stopped"} for t in ts), ts
    assert all(t["epochs_done"] >= 1 for t in ts), ts
    (parent,) = stack.mlflow.search_runs(
        [e.experiment_id for e in stack.mlflow.search_experiments(view_type=ViewType.ALL)],
        f"tags.`sweeps.sweep_uid` = '{s['uid']}' and tags.`sweeps.role` = 'sweep'",
    )
    assert parent.info.status == "FINISHED" and parent.info.end_time, parent.info
    children = stack.mlflow.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert {c.info.run_id for c in children} == {t["mlflow_run_id"] for t in ts}
    for c in children:
        assert c.info.status == "FINISHED" and c.info.end_time, c.info
        curve = stack.mlflow.get_metric_history(c.info.run_id, "val_accuracy")
        (t,) = [t for t in ts if t["mlflow_run_id"] == c.info.run_id]
        assert len(curve) == t["epochs_done"], (t, curve)
    return ts


def test_every_service_is_healthy_and_only_api_and_mlflow_are_published(stack: Stack) -> None:
    assert stack.healthy_after < HEALTHY_WITHIN
    published = {}
    for c in stack.project.containers():
        ports = {k: v for k, v in (c["NetworkSettings"]["Ports"] or {}).items() if v}
        if ports:
            published[c["Config"]["Labels"]["com.docker.compose.service"]] = ports
    assert set(published) == {"api", "mlflow"}, published
    hosts = {b["HostIp"] for ports in published.values() for bs in ports.values() for b in bs}
    assert hosts == {"127.0.0.1"}, published


def test_every_container_runs_as_a_non_root_user(stack: Stack) -> None:
    for c in stack.project.containers():
        uids = {uid for uid, _ in processes(c)}
        assert uids and 0 not in uids, (c["Name"], processes(c))


def test_requests_without_the_token_are_refused(stack: Stack) -> None:
    r = httpx.get(f"{stack.api_url}/sweeps", timeout=30)
    assert r.status_code == 401, r.text
    assert httpx.get(f"{stack.api_url}/healthz", timeout=30).status_code == 200


def test_a_sweep_runs_on_both_workers_and_reaches_mlflow(stack: Stack) -> None:
    """And each worker's trial processes fork from that node's trial worker zygote."""
    s = submit(stack, "two-workers", trials=8, epochs=2)
    workers = stack.project.containers("ray-worker")
    assert len(workers) == 2
    seen: set[str] = set()
    forked: set[str] = set()
    assert_complete(stack, wait_final(stack, s["id"], workers, seen, forked))
    assert seen == {w["Name"] for w in workers}, seen
    assert forked == seen, forked


def test_a_worker_of_another_machine_joins_by_the_documented_route(stack: Stack) -> None:
    stack.remote("up", "-d", "--no-build")
    stack.remote.wait_healthy(HEALTHY_WITHIN)
    stack.project("up", "-d", "--no-build", "--scale", "ray-worker=0")  # the remote one only
    (remote,) = stack.remote.containers("ray-worker")
    seen: set[str] = set()
    s = submit(stack, "remote-worker", trials=2, epochs=2)
    assert_complete(stack, wait_final(stack, s["id"], [remote], seen))
    assert seen == {remote["Name"]}
    stack.remote("down")
    stack.project("up", "-d", "--no-build", "--scale", "ray-worker=1")


def test_down_and_up_keeps_sweeps_trials_and_mlflow_runs(stack: Stack) -> None:
    before = stack.api.get("/sweeps").json()
    trials_before = {s["id"]: trials(stack, s["id"]) for s in before["data"]}
    assert before["count"] == 2
    stack.project("down")
    stack.up("--scale", "ray-worker=1")
    after = stack.api.get("/sweeps").json()
    assert [(s["id"], s["status"]) for s in after["data"]] == [
        (s["id"], s["status"]) for s in before["data"]
    ]
    for s in after["data"]:
        assert [(t["key"], t["status"], t["epochs_done"]) for t in trials(stack, s["id"])] == [
            (t["key"], t["status"], t["epochs_done"]) for t in trials_before[s["id"]]
        ]
        assert_complete(stack, sweep(stack, s["id"]))


def test_no_secret_in_the_ray_nodes_config_the_jobs_or_the_api_logs(stack: Stack) -> None:
    services = yaml.safe_load(stack.project("config"))["services"]
    api_token, _, db_password = stack.env.secrets
    for name in ("ray-head", "ray-worker"):  # where the sweep jobs and their trials run
        rendered = yaml.safe_dump(services[name])
        assert api_token not in rendered and db_password not in rendered, name
    head = stack.project.containers("ray-head")[0]["Id"]
    jobs = run("docker", "exec", head, "ray", "job", "list", "--address", "http://127.0.0.1:8265")
    assert "service.job" in jobs, jobs
    logs = stack.project("logs", "--no-color", "api")
    for secret in stack.env.secrets:
        assert secret not in jobs and secret not in logs


def test_down_v_removes_everything_the_test_created(stack: Stack) -> None:
    stack.teardown()
    label = f"label=com.docker.compose.project={stack.name}"
    assert run("docker", "ps", "-aq", "--filter", label).split() == []
    assert run("docker", "volume", "ls", "-q", "--filter", label).split() == []
    assert stack.name not in run("docker", "network", "ls", "--format", "{{.Name}}")
