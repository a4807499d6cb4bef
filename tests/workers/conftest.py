"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="module")
def ray_session(ray_cluster) -> Iterator[None]:
    """This process joins the session's Ray cluster for the module's tests."""
    ray.init(address=ray_cluster.address, log_to_driver=False)
    yield
    ray.shutdown()
