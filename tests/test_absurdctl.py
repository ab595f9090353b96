"""The control CLI, run as a user runs it: a real process against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parent.parent
CTL = str(REPO / "scripts" / "absurdctl.py")


def ctl(dsn: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "ABSURD_DSN": dsn, "ABSURD_QUEUE": "cli", **(env or {})}
    return subprocess.run([sys.executable, CTL, *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_spawn_show_cancel_retry_round_trip(dsn):
    spawned = ctl(dsn, "spawn", "imaging", "--params", '{"ms": "a.ms"}',
                  "--priority", "3", "--max-attempts", "2", "--timeout", "30")
    task_id = spawned.stdout.strip()

    shown = json.loads(ctl(dsn, "show", task_id, "--json").stdout)
    cancelled = ctl(dsn, "cancel", task_id)
    again = ctl(dsn, "cancel", task_id)
    retried = ctl(dsn, "retry", task_id)

    assert spawned.returncode == 0, spawned.stderr
    assert shown["params"] == {"ms": "a.ms"}
    assert (shown["priority"], shown["max_attempts"], shown["timeout_s"]) == (3, 2, 30)
    assert cancelled.returncode == 0 and "was pending" in cancelled.stdout
    assert again.returncode == 7 and "already cancelled" in again.stdout
    assert retried.returncode == 0 and "pending again" in retried.stdout


def test_spawn_many_from_a_json_lines_file(dsn, tmp_path):
    lines = [json.dumps({"task_name": "photometry", "params": {"n": n},
                         "priority": n % 3}) for n in range(500)]
    batch = tmp_path / "tasks.jsonl"
    batch.write_text("\n".join(lines) + "\n")

    result = ctl(dsn, "spawn", "--file", str(batch), "--json")

    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 500
    stats = json.loads(ctl(dsn, "stats", "--json").stdout)
    assert stats["pending"] == 500


def test_bad_line_in_a_file_writes_nothing(dsn, tmp_path):
    batch = tmp_path / "tasks.jsonl"
    batch.write_text('{"task_name": "a"}\n{"task_name": "b", "max_attempts": 0}\n')

    result = ctl(dsn, "spawn", "--file", str(batch))

    assert result.returncode == 4
    assert ":2:" in result.stderr and "max_attempts" in result.stderr
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM absurd.tasks").fetchone() == (0,)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["spawn", "t", "--params", "[1]"], 4, "JSON object"),
        (["spawn", "t", "--params", "{nope"], 4, "not JSON"),
        (["spawn", "t", "--params", '{"x": NaN}'], 4, "NaN"),
        (["spawn", "t", "--params", '{"x": "\\u0000"}'], 4, "NUL"),
        (["spawn", "t", "--timeout", "-1"], 4, "timeout_s"),
        (["spawn", "t", "--max-attempts", "0"], 4, "max_attempts"),
        (["spawn", "bad name"], 4, "task name"),
        (["--queue", "Bad Queue", "stats"], 4, "queue name"),
        (["show", "999999"], 5, "does not exist"),
        (["cancel", "999999"], 5, "does not exist"),
        (["spawn"], 2, "a task name or --file"),
        (["spawn", "imaging", "--file", "x.jsonl"], 2, "a task name or --file"),
        (["spawn", "t", "--params", '{"x": ' + "9" * 5000 + "}"], 4, "--params"),
        (["spawn", "t", "--params", "[" * 5000 + "]" * 5000], 4, "--params"),
        (["spawn", "t", "--params", '{"x": 1e400}'], 4, "out-of-range"),
        (["spawn", "t", "--params", '{"x": "\\ud800"}'], 4, "lone surrogate"),
        (["spawn", "t", "--depends-on", "x"], 2, "not a task id"),
        (["cancel", "99999999999999999999"], 2, "not a task id"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_gets_a_clear_error_and_a_named_exit_code(dsn, args, code, message):
    result = ctl(dsn, *args)

    assert result.returncode == code, result.stderr
    assert message in result.stderr
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM absurd.tasks").fetchone() == (0,)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"task_name": ["imaging"]}', "task_name text"),
        ('{"task_name": "imaging", "depends_on": "12"}', "list of task ids"),
        ('{"task_name": "imaging", "depends_on": [1.9]}', "not a task id"),
        ('{"task_name": "imaging", "depends_on": ["a"]}', "not a task id"),
        ('{"task_name": "imaging", "params": ' + "[" * 3000 + "]" * 3000 + "}",
         "not JSON we can read"),
    ],
)
def test_bad_json_lines_are_refused_with_their_line(dsn, tmp_path, line, message):
    batch = tmp_path / "tasks.jsonl"
    batch.write_text(line + "\n")

    result = ctl(dsn, "spawn", "--file", str(batch))

    assert result.returncode == 4, result.stderr
    assert ":1:" in result.stderr and message in result.stderr


def test_a_file_that_is_not_utf8_is_refused(dsn, tmp_path):
    batch = tmp_path / "tasks.jsonl"
    batch.write_bytes(b"\xff\xfe{}\n")

    result = ctl(dsn, "spawn", "--file", str(batch))

    assert result.returncode == 4 and "not UTF-8" in result.stderr


def test_list_and_stats_tables(dsn):
    ctl(dsn, "spawn", "imaging")
    ctl(dsn, "spawn", "validation")

    listed = ctl(dsn, "list", "--task-name", "imaging")
    stats = ctl(dsn, "stats")

    assert "imaging" in listed.stdout and "validation" not in listed.stdout
    assert "pending" in stats.stdout and "queue cli" in stats.stdout


def test_unreachable_database_exits_3_without_the_password(tmp_path):
    from pgcluster import free_port

    dsn = f"host=127.0.0.1 port={free_port()} user=x password=hunter2"
    result = ctl(dsn, "stats")

    assert result.returncode == 3
    assert "cannot connect" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_unmigrated_database_is_refused_until_migrate(empty_dsn):
    refused = ctl(empty_dsn, "stats")
    migrated = ctl(empty_dsn, "migrate")
    again = ctl(empty_dsn, "migrate")

    assert refused.returncode == 6 and "migrate" in refused.stderr
    assert migrated.returncode == 0 and "applied: 1" in migrated.stdout
    assert "already current" in again.stdout
    assert ctl(empty_dsn, "stats").returncode == 0


def test_embedded_default_starts_once_and_is_reused(tmp_path):
    env = {"ABSURD_DSN": "", "ABSURD_STATE_DIR": str(tmp_path / "state")}
    try:
        first = ctl("", "spawn", "organize-files", env=env)
        second = ctl("", "stats", "--json", env=env)

        assert first.returncode == 0, first.stderr
        assert "using the embedded PostgreSQL" in first.stderr
        assert json.loads(second.stdout)["pending"] == 1
    finally:
        ctl("", "embedded", "stop", env=env)


def test_unknown_task_name_is_refused_unless_asked_for(dsn):
    refused = ctl(dsn, "spawn", "imagng")
    forced = ctl(dsn, "spawn", "imagng", "--unregistered")

    assert refused.returncode == 4
    assert "unknown task name 'imagng'" in refused.stderr
    assert "imaging" in refused.stderr
    assert forced.returncode == 0, forced.stderr


def test_spawn_takes_its_defaults_from_the_task_registry(dsn, tmp_path):
    tasks = tmp_path / "tasks.conf"
    tasks.write_text("[solve]\nhandler = m:f\nmax_attempts = 9\ntimeout = 77\n"
                     "backoff_base = 3\nbackoff_max = 30\n")

    task_id = ctl(dsn, "--tasks-config", str(tasks), "spawn", "solve").stdout.strip()
    shown = json.loads(ctl(dsn, "show", task_id, "--json").stdout)

    assert (shown["max_attempts"], shown["timeout_s"]) == (9, 77)
    assert (shown["backoff_base_s"], shown["backoff_max_s"]) == (3, 30)
