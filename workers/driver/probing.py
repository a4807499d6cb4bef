"""The pack size of each shape, probed once on a trial worker and cached on storage.

The probe (:mod:`workers.trial.probe`) runs as a Ray task with one trial's resources, so it
measures the device and threads a pack will get. Its answer is cached per shape (the pack
key), resources and device (the GPU models Ray reports for the cluster, as its
``accelerator_type`` resources name them, model and memory size; ``cpu`` without GPUs) in
``pack-sizes.json`` under the deployment's storage path, so later sweeps of the same shape on
the same hardware start at once. A probe that fails (no data set, a worker lost) or takes
longer than :data:`PROBE_TIMEOUT_S` is logged and the sweep packs :data:`FALLBACK` trials at
most, never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray

from workers.driver.resources import TrialResources
from workers.trial.probe import probe_task
from workers.trial.setup import TrialSetup

log = logging.getLogger(__name__)
CACHE_FILE = "pack-sizes.json"
FALLBACK = 8
"""Pack size cap when the probe cannot answer (the digits MLP's best on two CPU cores)."""
PROBE_TIMEOUT_S = 120.0
"""The longest a probe may take (it measures for a few seconds; the rest is a worker's start)."""


class PackSizes:
    """Probed pack sizes of one deployment (``storage_dir`` None: probe, never cache)."""

    def __init__(self, storage_dir: str | None, setup: TrialSetup, resources: TrialResources):
        self.path = Path(storage_dir, CACHE_FILE) if storage_dir else None
        self.setup, self.resources = setup, resources

    def size(self, key: tuple[tuple[str, object], ...], params: dict[str, Any]) -> int:
        """The pack size for shape ``key``, probed with one trial's parameters ``params``."""
        name = self._name(key)
        cached = self._read().get(name)
        if isinstance(cached, dict) and isinstance(cached.get("size"), int):
            return int(cached["size"])
        task = ray.remote(probe_task).options(
            num_cpus=self.resources.cpu, num_gpus=self.resources.gpu, max_retries=0
        )
        ref = task.remote(self.setup, params)
        try:
            found: dict[str, Any] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except Exception:
            log.warning("pack size probe failed; packing at most %d", FALLBACK, exc_info=True)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            return FALLBACK
        log.info("pack size probe: %s", found)
        self._write(name, found)
        return int(found["size"])

    def _name(self, key: tuple[tuple[str, object], ...]) -> str:
        what = {
            "key": list(key),
            "cpu": self.resources.cpu,
            "gpu": self.resources.gpu,
            "device": device_models(ray.cluster_resources()) if self.resources.gpu else "cpu",
        }
        return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, name: str, found: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = {**self._read(), name: found}
        try:  # whole or not at all: another sweep may read it meanwhile
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pack-sizes-")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError:
            log.warning("cannot cache the pack size at %s", self.path, exc_info=True)


def device_models(cluster: dict[str, float]) -> list[str]:
    """The GPU models of ``cluster`` (``ray.cluster_resources()``) as Ray names them
    (``accelerator_type:A100-80G``: model and memory size), sorted."""
    return sorted(k.split(":", 1)[1] for k in cluster if k.startswith("accelerator_type:"))
