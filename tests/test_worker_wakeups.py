"""An idle worker wakes at once on NOTIFY, and keeps doing so after losing its
listening connection; polling (60 s here) is only the fallback."""

from __future__ import annotations

import time
import uuid

import psycopg

from test_worker_outcomes import finished
from workerproc import start_worker, tasks_config, wait_for  # noqa: F401

IDLE = ("--poll-interval", "60")


def seconds_to_finish(client, task_id: int, timeout: float = 10) -> float:
    started = time.monotonic()
    finished(client, task_id, timeout)
    return time.monotonic() - started


def test_a_retry_wakes_an_idle_worker_at_once(client, start_worker, tmp_path):
    start_worker(*IDLE)
    task_id = client.spawn("fail-once", {"marker": str(tmp_path / "m")}).task_id
    assert finished(client, task_id)["state"] == "failed"
    time.sleep(0.5)  # the worker is idle again, waiting for up to a minute

    client.retry(task_id)

    assert seconds_to_finish(client, task_id) < 1.0
    assert client.show(task_id)["result"] == {"second": True}


def test_a_release_wakes_an_idle_worker_at_once(client, start_worker):
    task_id = client.spawn("noop").task_id
    [claimed] = client.claim(uuid.uuid4(), 1, 60)
    start_worker(*IDLE)
    time.sleep(0.5)

    assert client.release([claimed.run_id]) == ["released"]

    assert seconds_to_finish(client, task_id) < 1.0


def test_a_delayed_task_is_claimed_when_due_without_a_notify(client, start_worker):
    start_worker(*IDLE)
    task_id = client.spawn("noop", delay_s=1.5).task_id

    task = finished(client, task_id, timeout=10)

    assert task["runs"][0]["claimed_at"] >= task["available_at"]
    assert (task["runs"][0]["claimed_at"] - task["available_at"]).total_seconds() < 1


def test_pickup_is_back_within_a_second_after_the_listener_is_terminated(
        client, start_worker, dsn):
    worker = start_worker(*IDLE)
    with psycopg.connect(dsn, autocommit=True) as admin:
        terminated = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'absurd-worker listen' AND datname = "
            "current_database()").fetchall()
        assert terminated == [(True,)]

        announced_to_nobody = client.spawn("noop").task_id
        assert seconds_to_finish(client, announced_to_nobody) < 1.0
        wait_for(lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
            "'absurd-worker listen' AND query LIKE 'LISTEN%%'").fetchone()[0] == 1,
            5, "the listener to be back")
        time.sleep(0.2)

        heard = client.spawn("noop").task_id
        assert seconds_to_finish(client, heard) < 1.0
    assert "listener lost its connection" in worker.log()
