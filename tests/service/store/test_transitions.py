"""Status transitions are compare-and-set: two sessions racing on one sweep, on SQLite and
PostgreSQL, never lose a cancel and never overwrite a final status.

Each test holds one session's write open (uncommitted) while a second session, on a thread,
makes the racing write, which waits for the first's lock; then the first commits and the
second's outcome is checked, in both orders.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.errors import SweepFinishedError
from service.store.db import session_scope
from tests.specs import digits_body
from workers.events import TrialUpdate
from workers.spec import SweepSpec

SPEC = SweepSpec.model_validate(digits_body({"optim.lr": [0.1]}))
HELD_S = 0.5
"""How long the first session keeps its write open while the second one waits on it."""


def new_sweep(factory: sessionmaker[Session], status: str = "pending") -> int:
    with session_scope(factory) as session:
        sweep, _ = store.create_sweep(session, SPEC)
        sweep.status = status
        session.flush()
        sweep_id = sweep.id
    with session_scope(factory) as session:
        store.upsert_trial(session, sweep_id, TrialUpdate(1, "running"))
    return sweep_id


def race(
    factory: sessionmaker[Session],
    first: Callable[[Session], object],
    second: Callable[[Session], object],
) -> BaseException | None:
    """``first`` in a session left open ``HELD_S``; ``second`` meanwhile in another, which
    waits for the first's commit. Returns what ``second`` raised, if anything."""
    raised: list[BaseException] = []

    def run_second() -> None:
        try:
            with session_scope(factory) as session:
                second(session)
        except BaseException as err:
            raised.append(err)

    with session_scope(factory) as session:
        first(session)
        session.flush()
        thread = threading.Thread(target=run_second)
        thread.start()
        time.sleep(HELD_S)
        assert thread.is_alive(), "the second write did not wait for the first"
    thread.join(30)
    assert not thread.is_alive()
    return raised[0] if raised else None


def status_of(factory: sessionmaker[Session], sweep_id: int) -> tuple[str, str | None]:
    with session_scope(factory) as session:
        sweep = store.get_sweep(session, sweep_id)
        return sweep.status, sweep.best_trial_key


def test_a_cancel_racing_the_drivers_start_is_never_lost(factory) -> None:
    started_first = new_sweep(factory)
    race(
        factory,
        lambda s: store.mark_started(s, started_first, "/tmp/exp"),
        lambda s: store.request_cancel(s, started_first),
    )
    cancelled_first = new_sweep(factory)
    race(
        factory,
        lambda s: store.request_cancel(s, cancelled_first),
        lambda s: store.mark_started(s, cancelled_first, "/tmp/exp"),
    )
    assert status_of(factory, started_first)[0] == "cancelling"
    assert status_of(factory, cancelled_first)[0] == "cancelling"


def test_a_cancel_racing_completion_ends_as_the_rules_say(factory) -> None:
    completed_first = new_sweep(factory, "running")
    err = race(
        factory,
        lambda s: store.finish_sweep(s, completed_first, "completed", "done", 1),
        lambda s: store.request_cancel(s, completed_first),
    )
    assert isinstance(err, SweepFinishedError)  # 409: a completed sweep is never cancelled
    assert status_of(factory, completed_first) == ("completed", "trial-00001")

    cancelled_first = new_sweep(factory, "running")
    race(
        factory,
        lambda s: store.request_cancel(s, cancelled_first),
        lambda s: store.finish_sweep(s, cancelled_first, "completed", "done", 1),
    )
    assert status_of(factory, cancelled_first) == ("cancelled", "trial-00001")  # the cancel holds


def test_a_final_status_is_never_overwritten_by_a_racing_end(factory) -> None:
    sweep_id = new_sweep(factory, "running")
    err = race(
        factory,
        lambda s: store.finish_sweep(s, sweep_id, "completed", "done"),
        lambda s: store.finish_sweep(s, sweep_id, "failed", "Ray job stopped"),
    )
    assert err is None and status_of(factory, sweep_id)[0] == "completed"


def test_a_trials_final_status_is_never_overwritten_by_a_racing_report(factory) -> None:
    sweep_id = new_sweep(factory, "running")
    race(
        factory,
        lambda s: store.close_open_trials(s, sweep_id, "cancelled", "the sweep was cancelled"),
        lambda s: store.upsert_trial(s, sweep_id, TrialUpdate(1, "completed")),
    )
    with session_scope(factory) as session:
        trial = store.get_trial(session, store.get_sweep(session, sweep_id), 1)
        assert (trial.status, trial.message) == ("cancelled", "the sweep was cancelled")
