"""Migrations apply once, and a newer unknown schema is refused."""

from __future__ import annotations

import psycopg
import pytest

from absurd import schema
from absurd.errors import SchemaMismatch


def test_migrate_applies_every_migration_once(empty_dsn):
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert schema.current_version(conn) is None

        first = schema.migrate(conn)
        second = schema.migrate(conn)

        assert first == [m.version for m in schema.migrations()]
        assert second == []
        assert schema.check(conn) == schema.latest_version()


def test_check_refuses_a_database_without_the_schema(empty_dsn):
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(SchemaMismatch, match="absurdctl.py migrate"):
            schema.check(conn)


def test_newer_unknown_schema_is_refused(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO absurd.schema_version (version) VALUES (9999)")

        with pytest.raises(SchemaMismatch, match="upgrade absurd"):
            schema.migrate(conn)
        with pytest.raises(SchemaMismatch, match="newer"):
            schema.check(conn)


def test_functions_pin_their_search_path(dsn):
    with psycopg.connect(dsn) as conn:
        unpinned = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'absurd' AND NOT EXISTS ("
            "  SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) c "
            "  WHERE c LIKE 'search_path=%')"
        ).fetchall()
    assert unpinned == []


def test_functions_work_with_an_empty_search_path(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = ''")
        task_id = conn.execute("SELECT task_id FROM absurd.spawn('q', 't')").fetchone()[0]
        stats = conn.execute("SELECT pending FROM absurd.queue_stats('q')").fetchone()
    assert task_id > 0 and stats == (1,)
