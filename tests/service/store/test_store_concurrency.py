"""Concurrent sweep submissions, on a real SQLite file and a real PostgreSQL database: dozens of
threads at once, through the store and through the API, neither deadlock nor lose a sweep.

One contract class; the ``database_url`` fixture (tests/service/conftest.py) runs it on each
backend. Ray and MLflow are unreachable on purpose: a sweep must be stored even when its job
cannot be submitted yet (the monitor retries later).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.api.app import create_app
from service.config import Settings
from service.store.db import session_scope
from service.store.models import Sweep
from workers.events import TrialUpdate
from workers.spec import SweepSpec

THREADS = 48
JOIN_TIMEOUT_S = 120  # far above the seconds this takes; reaching it means a deadlock
UNREACHABLE = "http://127.0.0.1:9"
T = TypeVar("T")


def spec(i: int) -> SweepSpec:
    return SweepSpec.model_validate({"name": f"race-{i}", "parameters": {"optim.lr": [0.01, 0.1]}})


def run_at_once(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..n-1)`` on ``n`` threads released together; re-raises the first error."""
    barrier = threading.Barrier(n)

    def start(i: int) -> T:
        barrier.wait(timeout=JOIN_TIMEOUT_S)
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(start, i) for i in range(n)]
        return [f.result(timeout=JOIN_TIMEOUT_S) for f in futures]


def api_client(database_url: str, tmp_path: Path, **settings: Any) -> TestClient:
    """A client of the API on ``database_url`` (Ray and MLflow unreachable), with its token."""
    token = "t" * 32
    config = Settings(
        database_url=database_url,
        storage_path=str(tmp_path / "tune"),
        ray_dashboard_url=UNREACHABLE,
        mlflow_tracking_uri=UNREACHABLE,
        ray_auth_token=None,
        api_token=token,
        **settings,
    )
    app = create_app(config, background=False)
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


class TestConcurrentSubmissions:
    """Every backend keeps every sweep submitted concurrently, exactly once."""

    def count(self, factory: sessionmaker[Session]) -> int:
        with session_scope(factory) as session:
            return session.scalar(select(func.count()).select_from(Sweep)) or 0

    def test_dozens_of_concurrent_submissions_are_all_stored(
        self, factory: sessionmaker[Session]
    ) -> None:
        def submit(i: int) -> int:
            with session_scope(factory) as session:
                sweep, created = store.create_sweep(session, spec(i))
                session.flush()
                assert created
                return sweep.id

        ids = run_at_once(THREADS, submit)
        assert len(set(ids)) == THREADS
        assert self.count(factory) == THREADS

    def test_concurrent_retries_make_one_sweep_per_idempotency_key(
        self, factory: sessionmaker[Session]
    ) -> None:
        keys = 6

        def submit(i: int) -> tuple[str, int, bool]:
            key = f"key-{i % keys}"
            with session_scope(factory) as session:
                sweep, created = store.create_sweep(session, spec(i % keys), key)
                session.flush()
                return key, sweep.id, created

        results = run_at_once(THREADS, submit)
        ids_by_key = {key: {sid for k, sid, _ in results if k == key} for key, _, _ in results}
        assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
        assert Counter(created for _, _, created in results)[True] == keys
        assert self.count(factory) == keys

    def test_submissions_while_running_sweeps_report_and_cancel(
        self, factory: sessionmaker[Session]
    ) -> None:
        """New sweeps race with progress reports and locked cancel requests on older ones."""
        with session_scope(factory) as session:
            running = [store.create_sweep(session, spec(1000 + i))[0] for i in range(4)]
            session.flush()
            running_ids = [s.id for s in running]

        def work(i: int) -> None:
            target = running_ids[i % len(running_ids)]
            with session_scope(factory) as session:
                if i % 3 == 0:
                    store.create_sweep(session, spec(i))
                elif i % 3 == 1:
                    update = TrialUpdate(number=i + 1, status="running", params={"i": i})
                    store.upsert_trial(session, target, update)
                    store.record_epoch(session, target, i + 1, 1, {"val_acc": i / 100})
                else:
                    store.request_cancel(session, target)

        run_at_once(THREADS, work)
        assert self.count(factory) == len(running_ids) + THREADS // 3
        with session_scope(factory) as session:
            statuses = {store.get_sweep(session, sid).status for sid in running_ids}
        assert statuses == {"cancelling"}

    def test_dozens_of_concurrent_posts_to_the_api_are_all_stored(
        self, database_url: str, tmp_path: Path
    ) -> None:
        # 24 open sweeps: more than the default allows
        with api_client(database_url, tmp_path, max_open_sweeps=100) as client:

            def post(i: int) -> int:
                body = spec(i).model_dump(mode="json")
                resp = client.post("/sweeps", json=body, headers={"Idempotency-Key": f"k{i}"})
                assert resp.status_code == 201, resp.text
                return int(resp.json()["id"])

            ids = run_at_once(24, post)
            listed = client.get("/sweeps", params={"limit": 500}).json()
        assert len(set(ids)) == 24
        assert listed["count"] == 24
        assert {s["id"] for s in listed["data"]} == set(ids)

    def test_fifty_concurrent_posts_of_ten_keys_make_ten_sweeps_and_forty_replays(
        self, database_url: str, tmp_path: Path
    ) -> None:
        with api_client(database_url, tmp_path) as client:

            def post(i: int) -> tuple[int, int, int]:
                key = i % 10  # keys 0..9, each sent five times at once
                body = spec(key).model_dump(mode="json")
                resp = client.post("/sweeps", json=body, headers={"Idempotency-Key": f"key-{key}"})
                assert resp.status_code in (200, 201), resp.text
                return key, resp.status_code, int(resp.json()["id"])

            answers = run_at_once(50, post)
            listed = client.get("/sweeps", params={"limit": 500}).json()
            another = spec(99).model_dump(mode="json")
            other = client.post("/sweeps", json=another, headers={"Idempotency-Key": "key-3"})
        codes = Counter(code for _, code, _ in answers)
        assert codes == {201: 10, 200: 40}, codes
        ids_by_key: dict[int, set[int]] = {}
        for key, _, sweep_id in answers:
            ids_by_key.setdefault(key, set()).add(sweep_id)
        assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
        assert listed["count"] == 10
        assert {s["id"] for s in listed["data"]} == set().union(*ids_by_key.values())
        assert other.status_code == 409 and "key-3" not in other.text, other.text
