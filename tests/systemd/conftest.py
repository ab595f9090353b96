"""Fixtures of the systemd tests: a freshly booted sandbox per test (see sandbox.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from machine import Machine, host_binds
from pgcluster import PgCluster
from sandbox import Sandbox, unavailable_reason


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = unavailable_reason()
    for item in items:
        if item.get_closest_marker("systemd") and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def machine(pg_cluster: PgCluster) -> Iterator[Machine]:
    """A freshly booted sandbox that can reach the session's test PostgreSQL."""
    sandbox = Sandbox(host_binds(pg_cluster))
    try:
        sandbox.boot()
        yield Machine(sandbox)
    finally:
        sandbox.shutdown()
