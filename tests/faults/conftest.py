"""Fixtures of the fault tests: components of their own to break, and the service around them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.components import PrivateMlflow, PrivatePostgres, PrivateRay


@pytest.fixture
def private_ray(tmp_path: Path) -> Iterator[Callable[[int], PrivateRay]]:
    """Starts a Ray head of the test's own with that many CPUs; all are killed at the end."""
    made: list[PrivateRay] = []

    def start(num_cpus: int) -> PrivateRay:
        cluster = PrivateRay(tmp_path, num_cpus)
        made.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in made:
        cluster.close()


@pytest.fixture
def private_mlflow(tmp_path: Path) -> Iterator[PrivateMlflow]:
    """An MLflow server of the test's own, not started yet."""
    server = PrivateMlflow(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, started, with an empty database ``sweeps``."""
    server = PrivatePostgres(tmp_path)
    server.start()
    server.create_database()
    yield server
    server.close()
