"""A pg_dump of a working queue restores cleanly and the queue keeps working."""

from __future__ import annotations

import subprocess
import uuid

import psycopg

from absurd import schema
from absurd.client import Client, TaskSpec


def fill_every_state(client: Client) -> None:
    ids = [s.task_id for s in client.spawn_many(
        [TaskSpec("t", {"n": n}, max_attempts=1 if n == 2 else 5) for n in range(7)]
    )]
    client.spawn("later", delay_s=3600)
    client.spawn("waits", depends_on=[ids[6]])
    worker = uuid.uuid4()
    client.register_worker(worker, hostname="h", pid=1, instance=None,
                           concurrency=1, task_names=["t"])
    runs = {r.task_id: r for r in client.claim(worker, 5, 30)}
    client.complete(runs[ids[0]].run_id, {"ok": 1})
    client.fail(runs[ids[1]].run_id, {"message": "retry me"})
    client.fail(runs[ids[2]].run_id, {"message": "for good"})
    client.cancel(ids[3])
    client.set_progress(runs[ids[4]].run_id, "halfway")


def test_dump_restores_into_a_fresh_database_and_keeps_working(
    pg_cluster, dsn, empty_dsn, tmp_path
):
    with Client.connect(dsn, "restore-q") as client:
        fill_every_state(client)
        before = client.stats()
    dump = tmp_path / "absurd.dump"

    subprocess.run(
        [pg_cluster.bin("pg_dump"), "--format=custom", "--file", str(dump), dsn],
        check=True, capture_output=True, text=True,
    )
    restored = subprocess.run(
        [pg_cluster.bin("pg_restore"), "--single-transaction", "--exit-on-error",
         "--dbname", empty_dsn, str(dump)],
        capture_output=True, text=True,
    )

    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(empty_dsn) as conn:
        assert schema.check(conn) == schema.latest_version()
    with Client.connect(empty_dsn, "restore-q") as client:
        after = client.stats()
        assert (after.pending, after.running, after.waiting) == (
            before.pending, before.running, before.waiting)
        assert (after.completed, after.failed, after.cancelled) == (
            before.completed, before.failed, before.cancelled)
        new = client.spawn("after-restore")
        claimed = client.claim(uuid.uuid4(), 10, 30, task_names=["after-restore"])
        assert [c.task_id for c in claimed] == [new.task_id]
        assert client.complete(claimed[0].run_id, "fine") == "completed"
        assert client.stats().completed == before.completed + 1
