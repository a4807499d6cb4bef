"""Where Tune keeps a sweep's experiment state and checkpoints, written so a kill cannot tear them.

:func:`storage_filesystem` gives Tune a local filesystem that publishes each state file by an
atomic rename, and only when it is whole (:func:`validator`: JSON that parses, a pickle whose
opcode stream is complete); otherwise the previous version stays. Publishing an
``experiment_state-*.json`` prunes the checkpoints older than the ones it names
(:func:`prune_superseded_checkpoints`). Object stores (``s3://``) keep Tune's own filesystem.
ARCHITECTURE.md ("Reconciliation and resume") says why each is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickletools
import re
import secrets
import shutil
from collections.abc import Callable
from typing import Any

import pyarrow
import pyarrow.fs as pafs

log = logging.getLogger(__name__)
TMP_MARK = ".sweeps-tmp-"
"""Infix of the temporary files; a file with it in its name is an interrupted write."""
VALIDATED_MAX_BYTES = 64 << 20
"""State files up to this size are checked before they are published."""


def _json_whole(data: bytes) -> bool:
    """Whether ``data`` is one JSON document (Tune's state files) with nothing cut off."""
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _json_lines_whole(data: bytes) -> bool:
    """Whether ``data`` is whole JSON lines (``result.json``): every line parses."""
    return all(_json_whole(line) for line in data.splitlines() if line.strip())


def _pickle_whole(data: bytes) -> bool:
    """Whether ``data`` is one complete pickle, judged by its opcodes alone (nothing runs)."""
    try:
        end = 0
        for opcode, _arg, pos in pickletools.genops(data):
            end = pos if pos is not None else end
            if opcode.name == "STOP":
                return end == len(data) - 1
    except ValueError:
        return False
    return False


STATE_FILE = re.compile(r"experiment_state-.*\.json$")
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


def last_results(state: bytes) -> list[dict[str, Any]]:
    """The last result of every trial in an experiment state (``{}`` for a trial without)."""
    trial_data = json.loads(state).get("trial_data", [])
    return [_json_object(_json_object(entry[1]).get("last_result")) for entry in trial_data]


def restore_points(state: bytes) -> dict[str, int]:
    """Trial id -> the oldest checkpoint index to keep, for every trial ``state`` names a
    checkpoint of.

    A trial's last result names its last checkpoint (``checkpoint_dir_name``, which Ray adds
    to a result reported with a checkpoint): a driver resumed from ``state`` restores the trial
    from it, so it and every newer one stay (a running trial's retry after a worker failure
    restores from the newest, which Tune holds in memory), and the one before it too: the
    checkpoint Tune registered can trail the last result by one (seen when a worker died as it
    reported). Everything older goes, so a running pack keeps the checkpoints of a snapshot
    period, whatever its epochs.
    """
    points: dict[str, int] = {}
    for last in last_results(state):
        match = CHECKPOINT_DIR.match(str(last.get("checkpoint_dir_name") or ""))
        if match and last.get("trial_id"):
            points[str(last["trial_id"])] = int(match.group(1)) - 1
    return points


def prune_superseded_checkpoints(experiment_dir: str, state: bytes) -> int:
    """Delete the checkpoints that :func:`restore_points` lets go; how many.

    Trial directories are matched by the trial id in their name (``<trainable>_<id>_...``);
    a directory matching no trial, or several, is left alone.
    """
    points = restore_points(state)
    removed = 0
    with os.scandir(experiment_dir) as entries:
        trial_dirs = [e for e in entries if e.is_dir()]
    for trial_dir in trial_dirs:
        ids = [trial_id for trial_id in points if f"_{trial_id}_" in trial_dir.name]
        if len(ids) != 1:
            continue
        with os.scandir(trial_dir.path) as entries:
            for entry in entries:
                match = CHECKPOINT_DIR.match(entry.name)
                if match and int(match.group(1)) < points[ids[0]] and entry.is_dir():
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
    return removed


def validator(path: str) -> Callable[[bytes], bool] | None:
    """The check a file must pass before it is published, or None: not a state file.

    Pickles (``.pkl``; Tune also pickles ``basic-variant-state-*.json``, judged by content), the
    experiment state (one JSON document) and other ``.json`` files (one document, like
    ``params.json``, or JSON lines, like ``result.json``). Everything else (checkpoint files,
    CSV and TensorBoard logs) is written straight through: a trial uploads its checkpoint
    before reporting it, so no state names a checkpoint whose upload was cut short.
    """
    name = os.path.basename(path)
    if name.endswith(".pkl"):
        return _pickle_whole
    if STATE_FILE.search(name):
        return _json_whole
    if name.endswith(".json"):
        return _json_or_pickle_whole
    return None


def _json_or_pickle_whole(data: bytes) -> bool:
    if data[:1] == b"\x80":  # a pickle (protocol 2 or later) under a .json name
        return _pickle_whole(data)
    return _json_whole(data) or _json_lines_whole(data)  # params.json, or result.json


def is_local(storage_path: str) -> bool:
    """Whether ``storage_path`` is a local directory rather than a URI (``s3://...``)."""
    return "://" not in storage_path or storage_path.startswith("file://")


def storage_filesystem(storage_path: str) -> pafs.FileSystem | None:
    """The filesystem Tune should write ``storage_path`` through; None leaves Tune's default."""
    return pafs.PyFileSystem(AtomicLocalHandler()) if is_local(storage_path) else None


def local_path(storage_path: str) -> str:
    """``storage_path`` as the plain absolute path :func:`storage_filesystem` expects."""
    if not is_local(storage_path):
        return storage_path
    return os.path.abspath(storage_path.removeprefix("file://"))


class _RenameOnClose(io.FileIO):
    """A file written under a temporary name and renamed to ``final`` once closed.

    A write that fails part-way (an exception, not a kill), or a state file that is not whole
    (:func:`validator`), removes the temporary file; a kill leaves it behind under its
    temporary name, where nothing reads it.
    """

    def __init__(self, final: str, check: Callable[[bytes], bool]) -> None:
        self.final = final
        self.check = check
        self.tmp = f"{final}{TMP_MARK}{secrets.token_hex(4)}"
        super().__init__(self.tmp, "wb")
        self.failed = False

    def write(self, b: Any) -> int:
        try:
            return super().write(b)
        except BaseException:
            self.failed = True
            raise

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            os.fsync(self.fileno())
        except BaseException:
            self.failed = True
            raise
        finally:
            super().close()
            if not self.failed and not self._whole():
                self.failed = True
                log.warning("not publishing %s: the copied file is incomplete", self.final)
            if self.failed:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp)
            else:
                os.replace(self.tmp, self.final)
                if STATE_FILE.search(os.path.basename(self.final)):
                    self._prune()

    def _prune(self) -> None:
        try:
            with open(self.final, "rb") as f:
                removed = prune_superseded_checkpoints(os.path.dirname(self.final), f.read())
        except Exception:  # pruning only saves disk; a failure must not fail the upload
            log.warning("pruning checkpoints beside %s failed", self.final, exc_info=True)
            return
        if removed:
            log.debug("pruned %d superseded checkpoints beside %s", removed, self.final)

    def _whole(self) -> bool:
        if os.path.getsize(self.tmp) > VALIDATED_MAX_BYTES:
            return True
        with open(self.tmp, "rb") as f:
            return self.check(f.read())


class AtomicLocalHandler(pafs.FileSystemHandler):
    """The local filesystem, except that state files are published atomically, and whole."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __hash__(self) -> int:
        return hash(type(self))

    def __reduce__(self) -> tuple[Any, ...]:  # trial workers receive it pickled
        return (AtomicLocalHandler, ())

    def get_type_name(self) -> str:
        return "sweeps-atomic-local"

    def normalize_path(self, path: str) -> str:
        return str(self.fs.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(selector)
        return [i for i in infos if TMP_MARK not in i.base_name]

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        check = validator(path)
        if check is None:
            return self.fs.open_output_stream(path, metadata=metadata)
        return pyarrow.PythonFile(_RenameOnClose(path, check), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return self.fs.open_append_stream(path)
