"""The dispatcher's decisions, against a real database and a Ray Jobs client that can be made
slow or unreachable on demand (the faults the real cluster cannot produce at a chosen moment).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.config import Settings
from service.dispatch.dispatcher import Dispatcher
from service.errors import InputLimitError
from service.store.db import init_db, make_engine, make_session_factory, session_scope
from tests.service.helpers import make_settings
from tests.specs import digits_body
from workers.errors import RayJobsError
from workers.jobs import JobState, Node
from workers.spec import SweepSpec


class Jobs:
    """A Ray Jobs client whose cluster answers as told: ``submit`` waits for ``release`` while
    ``hold`` is set, ``down`` makes every call fail, ``ended`` says how submitted jobs end."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.hold, self.release, self.waiting = False, threading.Event(), threading.Event()
        self.down = False
        self.ended: JobState | None = None
        self.node_list: list[Node] = []

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        env_vars: dict[str, str],
        resources: dict[str, float] | None = None,
    ) -> str:
        self._reach()
        if self.hold:
            self.waiting.set()
            self.release.wait(30)
        self.submitted.append(submission_id)
        return submission_id

    def status(self, job_id: str) -> JobState:
        self._reach()
        if job_id not in self.submitted:
            return "missing"
        return self.ended or "running"

    def stop(self, job_id: str) -> bool:
        self._reach()
        return True

    def nodes(self) -> list[Node]:
        self._reach()
        return self.node_list

    def logs(self, job_id: str) -> str:
        self._reach()
        return ""

    def delete(self, job_id: str) -> bool:
        self._reach()
        return True

    def _reach(self) -> None:
        if self.down:
            raise RayJobsError("cannot reach Ray's Jobs API at http://127.0.0.1:1 (test)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    nowhere = SimpleNamespace(
        address="127.0.0.1:1", dashboard_url="http://127.0.0.1:1", token="t", uri="http://x"
    )
    return make_settings(
        tmp_path, nowhere, nowhere, max_resumes=2, ray_grace_seconds=0.5,
        unschedulable_grace_seconds=3.0,
    )  # fmt: skip


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    init_db(engine)
    yield make_session_factory(engine)
    engine.dispose()


def new_sweep(factory: sessionmaker[Session], **kw: Any) -> int:
    spec = SweepSpec.model_validate(digits_body({"optim.lr": [0.1]}) | kw)
    with session_scope(factory) as session:
        sweep, _ = store.create_sweep(session, spec)
        session.flush()
        return sweep.id


def sweep_of(factory: sessionmaker[Session], sweep_id: int) -> tuple[str, int, str, str | None]:
    with session_scope(factory) as session:
        s = store.get_sweep(session, sweep_id)
        return s.status, s.resumes, s.message, s.ray_job_id


def test_reconciliation_leaves_a_sweep_alone_while_its_job_is_being_submitted(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    jobs = Jobs()
    jobs.hold = True
    dispatcher = Dispatcher(settings, factory, jobs)
    sweep_id = new_sweep(factory)
    posting = threading.Thread(target=dispatcher.submit, args=(sweep_id,))
    posting.start()
    assert jobs.waiting.wait(10)  # the job id is stored; Ray does not know the job yet
    dispatcher.reconcile()
    jobs.release.set()
    posting.join(10)

    status, resumes, _, job_id = sweep_of(factory, sweep_id)
    assert jobs.submitted == [job_id] and resumes == 0 and status == "pending"


def test_every_resubmission_counts_and_past_max_resumes_the_sweep_fails(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    jobs = Jobs()
    jobs.ended = "failed"
    dispatcher = Dispatcher(settings, factory, jobs)
    sweep_id = new_sweep(factory)
    dispatcher.submit(sweep_id)
    for _ in range(settings.max_resumes + 1):
        dispatcher.reconcile()

    status, resumes, message, _ = sweep_of(factory, sweep_id)
    assert len(jobs.submitted) == 1 + settings.max_resumes
    assert (status, resumes) == ("failed", settings.max_resumes)
    assert "after 2 resumes; giving up" in message


def test_a_cluster_unreachable_past_its_grace_fails_the_open_sweeps_naming_ray(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    jobs = Jobs()
    dispatcher = Dispatcher(settings, factory, jobs)
    sweep_id = new_sweep(factory)
    dispatcher.submit(sweep_id)
    jobs.down = True
    dispatcher.reconcile()
    assert sweep_of(factory, sweep_id)[0] == "pending"  # within the grace: judged later
    threading.Event().wait(settings.ray_grace_seconds + 0.1)
    dispatcher.reconcile()

    status, _, message, _ = sweep_of(factory, sweep_id)
    assert status == "failed" and "Ray cluster at http://127.0.0.1:1" in message
    assert "unreachable" in message


def test_a_sweep_admitted_while_ray_could_not_list_its_nodes_fails_after_the_grace_if_it_fits_none(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """Ray could not say at submission (no listing): the sweep is let through; once the nodes
    are listed and none can hold a trial for the grace, it fails naming the largest node. A
    sweep that fits is left alone."""
    jobs = Jobs()
    dispatcher = Dispatcher(settings, factory, jobs)
    dispatcher.check_fits(200.0, None)  # no listing: admitted
    huge = new_sweep(factory, resources_per_trial={"cpu": 200})
    small = new_sweep(factory)
    for sweep_id in (huge, small):
        dispatcher.submit(sweep_id)
    jobs.node_list = [Node("10.0.0.7", {"CPU": 2.0}), Node("10.0.0.8", {"CPU": 8.0})]
    threading.Event().wait(2.1)  # the empty listing is asked again
    dispatcher.reconcile()
    assert sweep_of(factory, huge)[0] == "pending"  # nodes may still be joining
    threading.Event().wait(settings.unschedulable_grace_seconds + 0.1)
    dispatcher.reconcile()

    status, _, message, _ = sweep_of(factory, huge)
    assert status == "failed", message
    assert "cpu=200" in message and "largest node (10.0.0.8) has CPU=8" in message
    assert sweep_of(factory, small)[0] == "pending"
    with pytest.raises(InputLimitError, match=r"largest node \(10.0.0.8\)"):
        dispatcher.check_fits(200.0, None)  # listed now: refused at the door
