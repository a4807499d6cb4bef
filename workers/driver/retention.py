"""What a final sweep leaves on storage: its experiment directory reduced to what
:data:`~workers.events.KeepCheckpoints` keeps (by default the best trial's last checkpoint).

A final sweep is never resumed, so Tune's state goes; removal never fails the sweep.
"""

from __future__ import annotations

import logging

import pyarrow.fs as pafs

from workers.driver.storage import (
    CHECKPOINT_DIR,
    STATE_FILE,
    is_local,
    last_results,
    local_path,
)
from workers.events import KeepCheckpoints

log = logging.getLogger(__name__)


def apply_retention(
    storage_path: str, experiment: str, best_trial_id: str | None, keep: KeepCheckpoints
) -> str | None:
    """Reduce the final sweep's experiment directory ``experiment`` under ``storage_path`` (a
    directory or a URI pyarrow opens, like ``s3://``) to what ``keep`` keeps
    (:func:`retain_checkpoints`); the kept checkpoint directory, or None. Never raises: disk
    is not worth failing a finished sweep over, so an error is logged and what is left stays.
    """
    if keep == "all":
        return None
    try:
        if is_local(storage_path):
            fs, root = pafs.LocalFileSystem(), local_path(storage_path)
        else:
            fs, root = pafs.FileSystem.from_uri(storage_path)
        kept = retain_checkpoints(fs, f"{root.rstrip('/')}/{experiment}", best_trial_id, keep)
    except Exception:
        where = f"{storage_path}/{experiment}"
        log.warning(
            "could not reduce %s to keep=%s; what is left stays", where, keep, exc_info=True
        )
        return None
    return f"{storage_path.rstrip('/')}/{experiment}/{kept}" if kept else None


def retain_checkpoints(
    fs: pafs.FileSystem, experiment_dir: str, best_trial_id: str | None, keep: KeepCheckpoints
) -> str | None:
    """Delete what ``keep`` does not keep of a final sweep's ``experiment_dir``; the kept
    checkpoint as ``<trial dir>/<checkpoint dir>``, or None.

    A final sweep is never resumed, so Tune's state (experiment and searcher state, the pickled
    tuner and trainable) goes with every other trial's directory. ``best`` keeps one checkpoint
    directory of trial ``best_trial_id``, whole: the one the newest experiment state names as
    its last (a file there was fully uploaded), else its newest. With no such trial or
    checkpoint it keeps nothing and ``experiment_dir`` goes, as with ``none``. ``all`` deletes
    nothing. A missing ``experiment_dir`` is nothing to do.

    Raises:
        OSError: listing or deleting failed (pyarrow raises its errors as ``OSError``).
    """
    if keep == "all" or fs.get_file_info(experiment_dir).type != pafs.FileType.Directory:
        return None
    kept = _best_checkpoint(fs, experiment_dir, best_trial_id) if keep == "best" else None
    if kept is None:
        fs.delete_dir(experiment_dir)
        return None
    trial_dir, checkpoint = kept
    _delete_all_but(fs, experiment_dir, trial_dir)
    _delete_all_but(fs, f"{experiment_dir}/{trial_dir}", checkpoint)
    return f"{trial_dir}/{checkpoint}"


def _best_checkpoint(
    fs: pafs.FileSystem, experiment_dir: str, trial_id: str | None
) -> tuple[str, str] | None:
    """The names of trial ``trial_id``'s directory and of its last checkpoint's, or None."""
    entries = _listing(fs, experiment_dir)
    dirs = [e for e in entries if e.type == pafs.FileType.Directory]
    trial_dirs = [e for e in dirs if trial_id and f"_{trial_id}_" in e.base_name]
    if len(trial_dirs) != 1:  # none, or a name matching several: too unsure to keep one
        return None
    checkpoints = sorted(
        e.base_name
        for e in _listing(fs, trial_dirs[0].path)
        if e.type == pafs.FileType.Directory and CHECKPOINT_DIR.match(e.base_name)
    )
    states = sorted(e.path for e in entries if STATE_FILE.search(e.base_name))
    named = _named_checkpoint(fs, states[-1], str(trial_id)) if states else None
    last = named if named in checkpoints else (checkpoints[-1] if checkpoints else None)
    return (trial_dirs[0].base_name, last) if last else None


def _named_checkpoint(fs: pafs.FileSystem, state_file: str, trial_id: str) -> str | None:
    """The checkpoint directory the experiment state names as ``trial_id``'s last, or None
    (none named, or a state that does not parse)."""
    with fs.open_input_stream(state_file) as f:
        state = f.read()
    try:
        lasts = last_results(state)
    except (ValueError, TypeError, LookupError, AttributeError):  # not shaped as Tune writes it
        return None
    for last in lasts:
        if last.get("trial_id") == trial_id and last.get("checkpoint_dir_name"):
            return str(last["checkpoint_dir_name"])
    return None


def _listing(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    return list(fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)))


def _delete_all_but(fs: pafs.FileSystem, directory: str, name: str) -> None:
    """Delete every entry of ``directory`` (files, and directories with their contents) but
    ``name``."""
    for entry in _listing(fs, directory):
        if entry.base_name == name:
            continue
        if entry.type == pafs.FileType.Directory:
            fs.delete_dir(entry.path)
        else:
            fs.delete_file(entry.path)
