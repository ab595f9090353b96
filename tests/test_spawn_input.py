"""Bad input is refused with a clear message and nothing is written.

Each case is checked twice: through the Python client, which refuses before a round
trip, and straight against the stored function, which holds the same rules for every
other client (psql, another language).
"""

from __future__ import annotations

import json

import psycopg
import pytest

from absurd.client import Client, TaskSpec
from absurd.errors import InvalidInput

BAD_SPAWNS = [
    pytest.param({"params": [1, 2]}, "expected a JSON object", id="params-array"),
    pytest.param({"params": "text"}, "expected a JSON object", id="params-string"),
    pytest.param({"params": {"a": "x\x00y"}}, "NUL", id="nul-in-value"),
    pytest.param({"params": {"a\x00": 1}}, "NUL", id="nul-in-key"),
    pytest.param({"params": {"deep": [{"x": ["\x00"]}]}}, "NUL", id="nul-nested"),
    pytest.param({"params": {"x": float("nan")}}, "NaN", id="nan"),
    pytest.param({"params": {"x": float("inf")}}, "NaN", id="infinity"),
    pytest.param({"params": {"x": "a" * 1_100_000}}, "over the limit", id="oversize"),
    pytest.param({"timeout_s": 0}, "timeout_s", id="timeout-zero"),
    pytest.param({"timeout_s": -5}, "timeout_s", id="timeout-negative"),
    pytest.param({"timeout_s": 10**9}, "timeout_s", id="timeout-absurd"),
    pytest.param({"timeout_s": float("nan")}, "timeout_s", id="timeout-nan"),
    pytest.param({"max_attempts": 0}, "max_attempts", id="attempts-zero"),
    pytest.param({"max_attempts": -1}, "max_attempts", id="attempts-negative"),
    pytest.param({"max_attempts": 10**6}, "max_attempts", id="attempts-absurd"),
    pytest.param({"delay_s": -1}, "delay_s", id="delay-negative"),
    pytest.param({"delay_s": float("inf")}, "delay_s", id="delay-infinite"),
    pytest.param({"priority": 10**6}, "priority", id="priority-absurd"),
    pytest.param({"backoff_base_s": 0}, "backoff_base_s", id="backoff-zero"),
    pytest.param({"backoff_base_s": 1e308}, "backoff_base_s", id="backoff-overflow"),
    pytest.param({"backoff_base_s": 10, "backoff_max_s": 5}, "backoff_max_s",
                 id="backoff-cap-below-base"),
    pytest.param({"backoff_max_s": 1e300}, "backoff_max_s", id="backoff-cap-absurd"),
    pytest.param({"task_name": ""}, "task name", id="task-name-empty"),
    pytest.param({"task_name": "rm -rf /"}, "task name", id="task-name-spaces"),
    pytest.param({"idempotency_key": ""}, "idempotency_key", id="key-empty"),
]


def spec_with(overrides: dict) -> TaskSpec:
    fields = {"task_name": "imaging", **overrides}
    return TaskSpec(**fields)


def task_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM absurd.tasks").fetchone()[0]


@pytest.mark.parametrize(("overrides", "message"), BAD_SPAWNS)
def test_client_refuses_bad_spawn(client, dsn, overrides, message):
    with pytest.raises(InvalidInput, match=message):
        client.spawn_many([spec_with(overrides)])
    assert task_count(dsn) == 0


def sql_arguments(overrides: dict) -> dict:
    """The overrides as the JSON object spawn_many() takes (NaN written as text)."""
    return {"task_name": "imaging", **overrides}


SQL_ONLY_CASES = [case for case in BAD_SPAWNS if "nul" not in case.id
                  and case.id not in ("nan", "infinity")]


@pytest.mark.parametrize(("overrides", "message"), SQL_ONLY_CASES)
def test_database_refuses_bad_spawn_from_any_client(dsn, overrides, message):
    task = json.dumps(sql_arguments(overrides))  # NaN/Infinity become bare words
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT * FROM absurd.spawn_many('q', %s::jsonb)",
                         (f"[{task}]",))
    assert raised.value.sqlstate in ("22023", "22P02")
    assert task_count(dsn) == 0


@pytest.mark.parametrize(
    "params_sql",
    [
        pytest.param("'{\"a\": \"\\u0000\"}'", id="nul-escape"),
        pytest.param("'{\"a\": NaN}'", id="nan"),
        pytest.param("'[1]'", id="array"),
    ],
)
def test_database_refuses_params_jsonb_cannot_hold(dsn, params_sql):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(f"SELECT * FROM absurd.spawn('q', 't', {params_sql}::jsonb)")
    assert raised.value.sqlstate in ("22023", "22P02", "22P05")
    assert task_count(dsn) == 0


@pytest.mark.parametrize(
    "queue", ["", "UPPER", "with space", "semi;colon", "x" * 57, "-leading", "ü"]
)
def test_invalid_queue_names_are_refused(dsn, queue):
    with pytest.raises(InvalidInput, match="invalid queue name"):
        Client.connect(dsn, queue)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT * FROM absurd.spawn(%s, 't')", (queue,))
    assert task_count(dsn) == 0


def test_one_bad_task_refuses_the_whole_batch(client, dsn):
    batch = [TaskSpec("good") for _ in range(50)] + [spec_with({"max_attempts": 0})]

    with pytest.raises(InvalidInput, match="max_attempts"):
        client.spawn_many(batch)

    assert task_count(dsn) == 0


def test_database_names_the_bad_task_of_a_batch(dsn):
    batch = json.dumps([{"task_name": "ok"}, {"task_name": "ok", "timeout_s": -1}])
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="task 2 of"):
            conn.execute("SELECT * FROM absurd.spawn_many('q', %s::jsonb)", (batch,))
    assert task_count(dsn) == 0


def test_unknown_dependency_is_refused(client, dsn):
    with pytest.raises(InvalidInput, match="depends_on"):
        client.spawn("t", depends_on=[987654])
    assert task_count(dsn) == 0


def test_oversize_result_is_refused_and_the_run_stays_open(client):
    import uuid

    client.spawn("t")
    run = client.claim(uuid.uuid4(), 1, 30)[0]

    with pytest.raises(InvalidInput, match="over the limit"):
        client.complete(run.run_id, {"x": "a" * 1_100_000})

    assert client.show(run.task_id)["state"] == "running"


def test_batch_of_ten_thousand_in_one_call(client):
    specs = [TaskSpec("convert-uvh5-to-ms", {"n": n}) for n in range(10_000)]

    spawned = client.spawn_many(specs)

    assert len(spawned) == 10_000
    assert all(s.created for s in spawned)
    assert len({s.task_id for s in spawned}) == 10_000
    assert client.stats().pending == 10_000
    first, last = client.show(spawned[0].task_id), client.show(spawned[-1].task_id)
    assert (first["params"], last["params"]) == ({"n": 0}, {"n": 9999})


def nested(levels: int) -> dict:
    """An object whose innermost value sits that many levels below the top."""
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def test_params_nested_past_the_depth_limit_are_refused(client, dsn):
    client.spawn("ok", nested(100))

    with pytest.raises(InvalidInput, match="nested more than 100 levels"):
        client.spawn("deep", nested(101))

    assert task_count(dsn) == 1
