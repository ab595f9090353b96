"""The database goes away and comes back: the worker stays up, keeps its tasks running,
tells systemd, and writes their outcomes once the database is back."""

from __future__ import annotations

import re
import signal

import psycopg
import pytest

from absurd import schema
from absurd.client import Client
from test_worker_outcomes import finished
from test_worker_stop import started_pid
from workerproc import start_worker, tasks_config, wait_for  # noqa: F401
from workerproc import NotifySocket, notify_socket  # noqa: F401


@pytest.fixture
def own_dsn(own_cluster) -> str:
    dsn = own_cluster.create_database("outage")
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.migrate(conn)
    return dsn


def systemd_env(sock: NotifySocket) -> dict[str, str]:
    """What systemd sets for Type=notify with WatchdogSec=1."""
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"}


def test_ready_is_sent_only_after_the_database_answers(
        own_cluster, own_dsn, start_worker, notify_socket):
    own_cluster.stop()
    worker = start_worker(database=own_dsn, env=systemd_env(notify_socket),
                          ready=False)

    early = notify_socket.collect(2.0)
    assert not any("READY=1" in m for m in early)
    assert any("STATUS=waiting for the database" in m for m in early)
    own_cluster.start()
    ready = notify_socket.wait_for("READY=1", 15)

    assert "STATUS=running 0 tasks, 4 free slots, last claim never" in ready
    worker.send(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", 5)
    assert worker.wait(10) == 0


def test_an_outage_keeps_the_worker_up_and_loses_no_outcome(
        own_cluster, own_dsn, start_worker, notify_socket, tmp_path):
    worker = start_worker(database=own_dsn, env=systemd_env(notify_socket))
    with Client.connect(own_dsn, "test-queue") as client:
        task_id = client.spawn("sleep", {"seconds": 2, "marks": str(tmp_path)}).task_id
        started_pid(tmp_path, task_id)
    notify_socket.wait_for("STATUS=running 1 tasks, 3 free slots", 5)

    own_cluster.stop()
    notify_socket.messages.clear()
    wait_for(lambda: (tmp_path / f"{task_id}-1-finished").exists(), 10,
             "the task to finish while the database is down")
    during = notify_socket.collect(2.0)

    assert worker.process.poll() is None
    assert sum(m == "WATCHDOG=1" for m in during) >= 3
    assert any(m.startswith("STATUS=database unreachable") and
               "1 outcomes waiting" in m for m in during)

    own_cluster.start()
    with Client.connect(own_dsn, "test-queue") as client:
        task = finished(client, task_id, timeout=20)
        assert task["state"] == "completed" and task["attempts"] == 1
        assert task["result"]["slept"] == 2
        after = client.spawn("noop").task_id
        assert finished(client, after, timeout=10)["state"] == "completed"
    log = worker.log()
    assert re.search(r"database unreachable \(.*\), 1 tasks keep running", log)
    assert "database reachable again, writing 1 outcomes" in log
