"""Connections to PostgreSQL: open, retry with backoff, and describe without secrets.

Any libpq connection string works, including multi-host ones such as
``host=db1,db2 target_session_attrs=read-write`` for a primary with a standby.
Passwords belong in ~/.pgpass or PGPASSFILE, never on a command line; a DSN is only
ever logged with its password removed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from psycopg import conninfo

from absurd.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

#: Seconds libpq waits for a server to answer before trying the next host.
CONNECT_TIMEOUT_S = 10
#: Reconnect backoff: first delay and cap, in seconds.
RECONNECT_FIRST_S = 0.2
RECONNECT_CAP_S = 10.0


def redact(dsn: str) -> str:
    """Return the DSN with any password removed, for logs and error messages."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    params.pop("password", None)
    return conninfo.make_conninfo(**params)


def describe(exc: BaseException) -> str:
    """A libpq error on one line: its lines joined, without libpq's tabs."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or repr(exc)


def check_dsn(dsn: str) -> str:
    """Refuse a DSN that libpq cannot parse, naming the problem."""
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the DSN, which may hold a password: not repeated.
        raise ConfigError(
            "invalid dsn: libpq cannot parse it; use key=value pairs or a "
            "postgresql:// URL, and quote values with spaces (password='a b')"
        ) from None
    return dsn


def connect(
    dsn: str, *, application_name: str = "absurd", autocommit: bool = True
) -> psycopg.Connection:
    """Open one connection, or raise DatabaseUnavailable saying where and why."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {redact(dsn)}: {describe(exc)}; check that PostgreSQL runs "
            "and that the dsn is right"
        ) from None


def backoff_delays(
    first: float = RECONNECT_FIRST_S, cap: float = RECONNECT_CAP_S
) -> Iterator[float]:
    """Exponential delays with full jitter, so that a fleet does not reconnect in step."""
    delay = first
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


def connect_with_retry(
    dsn: str,
    *,
    application_name: str = "absurd",
    give_up_after_s: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[DatabaseUnavailable, float], None] | None = None,
) -> psycopg.Connection | None:
    """Connect, retrying with backoff until connected, stopped or out of time.

    Returns None when should_stop() turns true; raises the last DatabaseUnavailable
    when give_up_after_s passes.
    """
    started = time.monotonic()
    for delay in backoff_delays():
        try:
            return connect(dsn, application_name=application_name)
        except DatabaseUnavailable as exc:
            elapsed = time.monotonic() - started
            if give_up_after_s is not None and elapsed + delay > give_up_after_s:
                raise
            if on_wait is not None:
                on_wait(exc, delay)
            else:
                log.warning("database unavailable, retrying in %.1fs: %s", delay, exc)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if should_stop():
                return None
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return None


def resolve_dsn(dsn: str | None, state_dir: Path) -> str:
    """The configured DSN, or the embedded PostgreSQL's when none is configured.

    A configured DSN is used as it is and never falls back to the embedded server.
    """
    if dsn:
        return check_dsn(dsn)
    from absurd import embedded

    return embedded.ensure_running(state_dir)
