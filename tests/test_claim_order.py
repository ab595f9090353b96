"""Claim order and exclusivity under load."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import psycopg

from absurd.client import Client, TaskSpec


def test_high_priority_overtakes_a_backlog_of_old_low_priority_tasks(client, dsn):
    backlog = [TaskSpec("photometry", {"n": n}, priority=-5) for n in range(10_000)]
    client.spawn_many(backlog)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE absurd.tasks SET available_at = now() - interval '1 hour'"
        )
    urgent = {s.task_id for s in client.spawn_many(
        [TaskSpec("imaging", {"n": n}, priority=5) for n in range(10)]
    )}

    claimed = client.claim(uuid.uuid4(), 20, 30)

    assert urgent <= {c.task_id for c in claimed}


def test_equal_priority_runs_oldest_due_first(client):
    late = client.spawn("t", delay_s=0.2)
    early = client.spawn("t")

    import time

    time.sleep(0.3)
    claimed = client.claim(uuid.uuid4(), 2, 30)

    assert [c.task_id for c in claimed] == [early.task_id, late.task_id]


def test_sixteen_concurrent_claimers_never_share_a_task(client, dsn):
    client.spawn_many([TaskSpec("t", {"n": n}) for n in range(1000)])
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def claimer() -> None:
        worker = uuid.uuid4()
        with Client.connect(dsn, client.queue) as own:
            start.wait()
            while True:
                batch = own.claim(worker, 7, 30)
                if not batch:
                    return
                with lock:
                    claimed.extend(c.task_id for c in batch)
                own.complete_many([(c.run_id, None) for c in batch])

    threads = [threading.Thread(target=claimer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    counts = Counter(claimed)
    assert len(counts) == 1000
    assert max(counts.values()) == 1
    stats = client.stats()
    assert (stats.completed, stats.pending, stats.running) == (1000, 0, 0)
    with psycopg.connect(dsn) as conn:
        runs = conn.execute(
            "SELECT count(*), count(DISTINCT task_id) FROM absurd.runs"
        ).fetchone()
    assert runs == (1000, 1000)


def test_concurrent_recovery_and_completion_give_one_outcome(client, dsn):
    """A worker completing just as a sweep recovers its lease: exactly one wins."""
    import time

    client.spawn_many([TaskSpec("t", {"n": n}, backoff_base_s=60,
                                backoff_max_s=60) for n in range(200)])
    runs = client.claim(uuid.uuid4(), 200, 0.5)
    time.sleep(0.6)
    results: dict[str, list] = {}

    def complete() -> None:
        with Client.connect(dsn, client.queue) as own:
            results["complete"] = own.complete_many([(r.run_id, "done") for r in runs])

    def recover() -> None:
        with Client.connect(dsn, client.queue) as own:
            results["recover"] = own.recover_expired()

    threads = [threading.Thread(target=complete), threading.Thread(target=recover)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    completed = {r.run_id for r, s in zip(runs, results["complete"])
                 if s == "completed"}
    recovered = {r.run_id for r in results["recover"]}
    assert completed.isdisjoint(recovered)
    assert len(completed) + len(recovered) == 200
    stats = client.stats()
    assert stats.completed == len(completed)
    assert stats.pending == len(recovered)
