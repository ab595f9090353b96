"""Fixtures: a PostgreSQL server the test session owns, and a fresh database per test.

The session starts one throw-away cluster (tests/pgcluster.py) and builds a template
database with the absurd schema applied; each test gets its own copy of it, so tests
never see one another's tasks. Fault tests that stop or kill the server take the
``own_cluster`` fixture instead and get a server of their own.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgcluster import SCHEMA_TEMPLATE, PgCluster  # noqa: E402

from absurd import schema  # noqa: E402
from absurd.client import Client  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_names = itertools.count()


def _start_cluster() -> PgCluster:
    cluster = PgCluster()
    cluster.init()
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = _start_cluster()
    template_dsn = cluster.create_database(SCHEMA_TEMPLATE)
    with psycopg.connect(template_dsn, autocommit=True) as conn:
        schema.migrate(conn)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A server of the test's own, for tests that stop, restart or kill it."""
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def dsn(pg_cluster: PgCluster) -> str:
    """A fresh database with the absurd schema applied."""
    name = f"t{os.getpid()}_{next(_names)}"
    return pg_cluster.create_database(name, template=SCHEMA_TEMPLATE)


@pytest.fixture
def empty_dsn(pg_cluster: PgCluster) -> str:
    """A fresh database without the absurd schema."""
    return pg_cluster.create_database(f"e{os.getpid()}_{next(_names)}")


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client.connect(dsn, "test-queue") as result:
        yield result


def pytest_report_header(config: pytest.Config) -> str:
    from pgcluster import default_bindir

    import subprocess

    bindir = default_bindir()
    version = subprocess.run([str(bindir / "postgres"), "--version"],
                             capture_output=True, text=True).stdout.strip()
    return f"test server: {version} ({bindir})"
