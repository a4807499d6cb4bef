"""The service's database, used by the API process and by the sweep jobs.

``db`` (engine, schema migrations, the session scope), ``models`` (tables), and the state
transitions and queries of each table (``sweeps``, ``trials``, ``standbys``; ``tracking`` for
the MLflow sender; ``jobs`` and ``leases`` for the API's Ray jobs and its lease), which every
caller runs inside its own session. The package re-exports the functions of the tables but
``tracking``: ``store.get_sweep(...)``.
"""

from service.store.jobs import (
    JobRow,
    add_job,
    assign_job,
    forget_job,
    keep_driver_log,
    recorded_jobs,
)
from service.store.leases import lease_holder, release_lease, take_lease
from service.store.standbys import (
    add_standby,
    claim_standby,
    mark_standby_ready,
    remove_standby,
    standby_poll,
    standbys,
)
from service.store.sweeps import (
    beat,
    body_hash,
    cancelling_since,
    create_sweep,
    find_replay,
    finish_sweep,
    get_sweep,
    list_sweeps,
    mark_started,
    open_count,
    open_sweeps,
    request_cancel,
    set_job,
    sweep_status,
    sweep_version,
)
from service.store.trials import (
    Best,
    best_trial,
    close_open_trials,
    get_trial,
    list_trials,
    record_artifact,
    record_epoch,
    set_trial_run,
    trial_counts,
    trial_outcomes,
    upsert_trial,
)

__all__ = [
    "Best",
    "JobRow",
    "add_job",
    "add_standby",
    "assign_job",
    "beat",
    "best_trial",
    "body_hash",
    "cancelling_since",
    "claim_standby",
    "close_open_trials",
    "create_sweep",
    "find_replay",
    "finish_sweep",
    "forget_job",
    "get_sweep",
    "get_trial",
    "keep_driver_log",
    "lease_holder",
    "list_sweeps",
    "list_trials",
    "mark_standby_ready",
    "mark_started",
    "open_count",
    "open_sweeps",
    "record_artifact",
    "record_epoch",
    "recorded_jobs",
    "release_lease",
    "remove_standby",
    "request_cancel",
    "set_job",
    "set_trial_run",
    "standby_poll",
    "standbys",
    "sweep_status",
    "sweep_version",
    "take_lease",
    "trial_counts",
    "trial_outcomes",
    "upsert_trial",
]
