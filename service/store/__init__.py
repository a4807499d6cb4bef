"""The service's database, used by the API process and by the sweep jobs.

``db`` (engine, schema migrations, the session scope), ``models`` (tables), and the state
transitions and queries of each table (``sweeps``, ``trials``, ``standbys``), which every caller
runs inside its own session. The package re-exports those functions: ``store.get_sweep(...)``.
"""

from service.store.standbys import (
    add_standby,
    claim_standby,
    mark_standby_ready,
    remove_standby,
    standby_exists,
    standbys,
    sweep_for_job,
)
from service.store.sweeps import (
    body_hash,
    cancelling_since,
    create_sweep,
    finish_sweep,
    get_sweep,
    list_sweeps,
    mark_started,
    open_sweeps,
    record_job,
    request_cancel,
    sweep_status,
    sweep_version,
)
from service.store.trials import (
    Best,
    best_trial,
    close_open_trials,
    get_trial,
    list_trials,
    record_epoch,
    trial_counts,
    upsert_trial,
)

__all__ = [
    "Best",
    "add_standby",
    "best_trial",
    "body_hash",
    "cancelling_since",
    "claim_standby",
    "close_open_trials",
    "create_sweep",
    "finish_sweep",
    "get_sweep",
    "get_trial",
    "list_sweeps",
    "list_trials",
    "mark_standby_ready",
    "mark_started",
    "open_sweeps",
    "record_epoch",
    "record_job",
    "remove_standby",
    "request_cancel",
    "standby_exists",
    "standbys",
    "sweep_for_job",
    "sweep_status",
    "sweep_version",
    "trial_counts",
    "upsert_trial",
]
