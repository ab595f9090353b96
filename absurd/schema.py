"""The database schema: ordered migrations under sql/, applied once each.

Migration files are named ``NNNN_description.sql`` and applied in number order, each
in its own transaction, under an advisory lock so that two scripts starting at once
do not both apply them. A database whose schema is newer than the newest migration
this version knows is refused: an older absurd must not act on rules it cannot know.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from absurd.errors import SchemaMismatch

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
#: Key of the advisory lock held while migrating (any constant; this one spells ABS).
MIGRATION_LOCK_KEY = 0x414253


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _sql_files() -> list[tuple[str, str]]:
    source_tree = Path(__file__).resolve().parent.parent / "sql"
    if source_tree.is_dir():
        return [(p.name, p.read_text()) for p in source_tree.iterdir()]
    packaged = resources.files("absurd.sql")
    return [(p.name, p.read_text()) for p in packaged.iterdir()]


def migrations() -> list[Migration]:
    found = []
    for name, sql in _sql_files():
        match = MIGRATION_NAME.fullmatch(name)
        if match:
            found.append(Migration(int(match.group(1)), name, sql))
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    return migrations()[-1].version


def current_version(conn: psycopg.Connection) -> int | None:
    """The schema version of the database, or None when absurd was never applied."""
    row = conn.execute("SELECT to_regclass('absurd.schema_version')").fetchone()
    if row is None or row[0] is None:
        return None
    row = conn.execute("SELECT max(version) FROM absurd.schema_version").fetchone()
    return row[0] if row else None


def _refuse_newer(current: int | None) -> None:
    latest = latest_version()
    if current is not None and current > latest:
        raise SchemaMismatch(
            f"the database schema is at version {current}, newer than the newest this "
            f"absurd knows ({latest}): upgrade absurd before using this database"
        )


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply every migration the database lacks; return the versions applied."""
    applied: list[int] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        current = current_version(conn)
        _refuse_newer(current)
        for migration in migrations():
            if current is not None and migration.version <= current:
                continue
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO absurd.schema_version (version) VALUES (%s)",
                    (migration.version,),
                )
            log.info("applied migration version=%d name=%s", migration.version,
                     migration.name)
            applied.append(migration.version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied


def check(conn: psycopg.Connection) -> int:
    """Return the schema version, or raise SchemaMismatch when it is not current."""
    current = current_version(conn)
    _refuse_newer(current)
    if current != latest_version():
        raise SchemaMismatch(
            f"the database schema is at version {current or 'none'}, this absurd needs "
            f"{latest_version()}: run 'absurdctl.py migrate' first"
        )
    return current


def ready_dsn(configured_dsn: str | None, state_dir: Path) -> str:
    """The DSN to use, with a schema this absurd can work with.

    The embedded default database is migrated on the spot, since nobody else manages
    it; a configured database must already be current (``absurdctl.py migrate``).
    """
    from absurd.database import connect, resolve_dsn

    dsn = resolve_dsn(configured_dsn, state_dir)
    with connect(dsn) as conn:
        if configured_dsn:
            check(conn)
        else:
            migrate(conn)
    return dsn
