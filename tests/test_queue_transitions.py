"""Every state transition of the queue, through the client API against PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg
import pytest

from absurd.client import Client, TaskSpec
from absurd.errors import InvalidInput, NotFound

WORKER = uuid.UUID(int=1)


def task_row(client: Client, task_id: int) -> dict:
    return client.show(task_id)


def claim_one(client: Client, lease_s: float = 30) -> object:
    claimed = client.claim(WORKER, 1, lease_s)
    assert len(claimed) == 1
    return claimed[0]


def test_spawn_makes_a_pending_task_with_its_options(client):
    spawned = client.spawn(
        "imaging", {"ms": "obs1.ms"}, priority=7, max_attempts=3, timeout_s=60,
        backoff_base_s=2, backoff_max_s=30,
    )

    task = task_row(client, spawned.task_id)
    assert spawned.created
    assert task["state"] == "pending"
    assert task["params"] == {"ms": "obs1.ms"}
    assert (task["priority"], task["max_attempts"], task["timeout_s"]) == (7, 3, 60)
    assert (task["backoff_base_s"], task["backoff_max_s"]) == (2, 30)
    assert task["queue"] == "test-queue"


def test_claim_starts_a_run_with_a_lease_and_the_params(client):
    spawned = client.spawn("imaging", {"ms": "a.ms"}, timeout_s=5)

    claimed = claim_one(client, lease_s=30)

    task = task_row(client, spawned.task_id)
    assert claimed.task_id == spawned.task_id
    assert claimed.params == {"ms": "a.ms"}
    assert claimed.attempt == 1
    assert claimed.timeout_s == 5
    assert task["state"] == "running"
    assert task["current_run_id"] == claimed.run_id
    assert task["runs"][0]["state"] == "running"
    lease = task["runs"][0]["lease_expires_at"] - task["runs"][0]["claimed_at"]
    assert timedelta(seconds=29) < lease <= timedelta(seconds=30)


def test_claim_only_takes_the_task_names_asked_for(client):
    client.spawn("imaging")
    wanted = client.spawn("photometry")

    claimed = client.claim(WORKER, 10, 30, task_names=["photometry"])

    assert [c.task_id for c in claimed] == [wanted.task_id]


def test_claim_takes_at_most_the_limit(client):
    client.spawn_many([TaskSpec("t") for _ in range(5)])

    assert len(client.claim(WORKER, 3, 30)) == 3
    assert len(client.claim(WORKER, 3, 30)) == 2
    assert client.claim(WORKER, 3, 30) == []


def test_complete_records_the_result_once(client):
    spawned = client.spawn("t")
    run = claim_one(client)

    assert client.complete(run.run_id, {"image": "x.fits"}) == "completed"
    assert client.complete(run.run_id, {"image": "other"}) == "stale"

    task = task_row(client, spawned.task_id)
    assert task["state"] == "completed"
    assert task["result"] == {"image": "x.fits"}
    assert task["finished_at"] is not None
    assert task["runs"][0]["state"] == "completed"


def test_fail_with_attempts_left_retries_after_backoff(client):
    spawned = client.spawn("t", max_attempts=3, backoff_base_s=10, backoff_max_s=100)
    run = claim_one(client)

    outcome = client.fail(run.run_id, {"type": "OSError", "message": "disk full"})

    task = task_row(client, spawned.task_id)
    assert outcome.status == "retrying"
    assert task["state"] == "pending"
    assert task["error"]["message"] == "disk full"
    delay = task["available_at"] - task["runs"][0]["finished_at"]
    assert timedelta(seconds=9) < delay <= timedelta(seconds=10)
    assert client.claim(WORKER, 1, 30) == []


def test_backoff_doubles_per_attempt_up_to_the_cap(client):
    with client.conn.cursor() as cur:
        delays = [
            cur.execute("SELECT absurd.backoff_delay(%s, 2, 20)", (n,)).fetchone()[0]
            for n in (1, 2, 3, 4, 5)
        ]
    assert [d.total_seconds() for d in delays] == [2, 4, 8, 16, 20]


def test_backoff_for_a_millionth_attempt_is_the_cap_not_an_overflow(client):
    delay = client.conn.execute(
        "SELECT absurd.backoff_delay(1000000, 1, 3600)"
    ).fetchone()[0]
    assert delay == timedelta(hours=1)


def test_fail_on_the_last_attempt_is_terminal(client):
    spawned = client.spawn("t", max_attempts=1)
    run = claim_one(client)

    assert client.fail(run.run_id, {"message": "boom"}).status == "failed"

    task = task_row(client, spawned.task_id)
    assert task["state"] == "failed"
    assert task["finished_at"] is not None


def test_non_retryable_fail_is_terminal_at_once(client):
    spawned = client.spawn("t", max_attempts=5)
    run = claim_one(client)

    assert client.fail(run.run_id, {"message": "bad"}, retryable=False).status == "failed"
    assert task_row(client, spawned.task_id)["state"] == "failed"


def test_release_returns_the_task_unchanged_and_charges_no_attempt(client):
    spawned = client.spawn("t")
    run = claim_one(client)

    assert client.release([run.run_id]) == ["released"]
    assert client.release([run.run_id]) == ["stale"]

    task = task_row(client, spawned.task_id)
    assert task["state"] == "pending"
    assert task["attempts"] == 0
    assert claim_one(client).attempt == 1


def test_heartbeat_extends_only_current_runs(client):
    client.spawn("t")
    run = claim_one(client, lease_s=5)

    answer = client.heartbeat(WORKER, [run.run_id, 999_999], 60)

    assert answer == {run.run_id: "ok", 999_999: "lost"}
    runs = task_row(client, run.task_id)["runs"]
    assert runs[0]["lease_expires_at"] - runs[0]["claimed_at"] > timedelta(seconds=50)


def test_heartbeat_of_another_worker_is_lost(client):
    client.spawn("t")
    run = claim_one(client)

    assert client.heartbeat(uuid.uuid4(), [run.run_id], 60) == {run.run_id: "lost"}


def test_set_progress_is_fenced(client):
    spawned = client.spawn("t")
    run = claim_one(client)

    assert client.set_progress(run.run_id, "imaging 3/10")
    client.complete(run.run_id)
    assert not client.set_progress(run.run_id, "late")
    assert task_row(client, spawned.task_id)["progress"] is None


def test_cancel_pending_is_immediate(client):
    spawned = client.spawn("t")

    assert client.cancel(spawned.task_id) == "pending"

    assert task_row(client, spawned.task_id)["state"] == "cancelled"
    assert client.claim(WORKER, 1, 30) == []


def test_cancel_running_flags_the_worker_and_discards_its_outcome(client, dsn):
    spawned = client.spawn("t")
    run = claim_one(client)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN absurd_cancel")

        assert client.cancel(spawned.task_id) == "running"

        notices = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notices] == [str(run.run_id)]
    assert client.heartbeat(WORKER, [run.run_id], 30) == {run.run_id: "cancelled"}
    assert client.complete(run.run_id, {"late": True}) == "cancelled"
    task = task_row(client, spawned.task_id)
    assert task["state"] == "cancelled"
    assert task["result"] is None
    assert task["runs"][0]["state"] == "cancelled"


def test_cancel_of_a_finished_task_changes_nothing(client):
    spawned = client.spawn("t")
    client.complete(claim_one(client).run_id)

    assert client.cancel(spawned.task_id) == "completed"
    assert task_row(client, spawned.task_id)["state"] == "completed"


def test_cancel_unknown_task_is_not_found(client):
    with pytest.raises(NotFound):
        client.cancel(424242)


def test_retry_gives_a_failed_task_a_fresh_set_of_attempts(client):
    spawned = client.spawn("t", max_attempts=1)
    client.fail(claim_one(client).run_id, {"message": "x"})

    assert client.retry(spawned.task_id) == "failed"

    task = task_row(client, spawned.task_id)
    assert task["state"] == "pending"
    assert task["attempts"] == 0
    assert claim_one(client).task_id == spawned.task_id


def test_retry_is_refused_while_a_cancelled_run_still_runs(client):
    spawned = client.spawn("t")
    run = claim_one(client)
    client.cancel(spawned.task_id)

    with pytest.raises(InvalidInput, match="still has a running attempt"):
        client.retry(spawned.task_id)

    client.fail(run.run_id, {"message": "stopped"})
    assert client.retry(spawned.task_id) == "cancelled"


def test_retry_of_a_pending_task_is_refused(client):
    spawned = client.spawn("t")
    with pytest.raises(InvalidInput, match="only failed or cancelled"):
        client.retry(spawned.task_id)


def test_expired_lease_is_recovered_as_a_failed_attempt(client):
    spawned = client.spawn("t", backoff_base_s=0.01, backoff_max_s=0.01)
    run = claim_one(client, lease_s=0.1)
    time.sleep(0.3)

    recovered = client.recover_expired()

    assert [(r.run_id, r.outcome) for r in recovered] == [(run.run_id, "retrying")]
    task = task_row(client, spawned.task_id)
    assert task["runs"][0]["state"] == "expired"
    assert task["error"]["type"] == "LeaseExpired"
    time.sleep(0.05)
    assert claim_one(client).attempt == 2


def test_a_fenced_worker_cannot_complete_after_recovery(client):
    spawned = client.spawn("t", backoff_base_s=0.01, backoff_max_s=0.01)
    old = claim_one(client, lease_s=0.1)
    time.sleep(0.3)
    client.recover_expired()
    time.sleep(0.05)
    new = claim_one(client)

    assert client.complete(old.run_id, {"by": "old"}) == "stale"
    assert client.fail(old.run_id, {"message": "old"}).status == "stale"
    assert client.heartbeat(WORKER, [old.run_id], 30) == {old.run_id: "lost"}
    assert client.release([old.run_id]) == ["stale"]
    assert client.complete(new.run_id, {"by": "new"}) == "completed"
    assert task_row(client, spawned.task_id)["result"] == {"by": "new"}


def test_repeated_lease_expiry_quarantines_the_task(client):
    spawned = client.spawn("t", max_attempts=10, backoff_base_s=0.01,
                           backoff_max_s=0.01)
    for _ in range(3):
        claim_one(client, lease_s=0.1)
        time.sleep(0.25)
        outcomes = client.recover_expired(quarantine_after=3)
        time.sleep(0.05)

    task = task_row(client, spawned.task_id)
    assert outcomes[0].outcome == "quarantined"
    assert task["state"] == "failed"
    assert task["error"]["type"] == "Quarantined"
    assert "3 times in a row" in task["error"]["message"]


def test_lease_expiry_on_the_last_attempt_fails_the_task(client):
    spawned = client.spawn("t", max_attempts=1)
    claim_one(client, lease_s=0.1)
    time.sleep(0.3)

    assert client.recover_expired()[0].outcome == "failed"
    assert task_row(client, spawned.task_id)["state"] == "failed"


def test_idempotency_key_spawns_once_per_queue(client, dsn):
    first = client.spawn("t", {"n": 1}, idempotency_key="obs-2026-12-03")
    again = client.spawn("t", {"n": 2}, idempotency_key="obs-2026-12-03")
    with Client.connect(dsn, "other-queue") as other:
        elsewhere = other.spawn("t", idempotency_key="obs-2026-12-03")

    assert first.created and not again.created and elsewhere.created
    assert again.task_id == first.task_id
    assert elsewhere.task_id != first.task_id
    assert task_row(client, first.task_id)["params"] == {"n": 1}


def test_idempotency_key_repeated_inside_one_batch(client):
    results = client.spawn_many([TaskSpec("t", idempotency_key="k")] * 3)

    assert [r.created for r in results] == [True, False, False]
    assert len({r.task_id for r in results}) == 1


def test_delayed_task_is_not_claimed_before_it_is_due(client):
    client.spawn("t", delay_s=0.5)

    assert client.claim(WORKER, 1, 30) == []
    assert 0 < client.next_due_in() <= 0.5
    time.sleep(0.6)
    assert len(client.claim(WORKER, 1, 30)) == 1


def test_dependencies_wait_then_receive_results(client):
    first = client.spawn("calibration-solve")
    second = client.spawn("calibration-apply", depends_on=[first.task_id])

    assert task_row(client, second.task_id)["state"] == "waiting"
    only_first = client.claim(WORKER, 5, 30)
    assert [c.task_id for c in only_first] == [first.task_id]

    client.complete(only_first[0].run_id, {"table": "bp.tbl"})

    claimed = client.claim(WORKER, 5, 30)
    assert [c.task_id for c in claimed] == [second.task_id]
    assert claimed[0].dependency_results == {str(first.task_id): {"table": "bp.tbl"}}


def test_a_failed_dependency_fails_its_dependents(client):
    first = client.spawn("a", max_attempts=1)
    second = client.spawn("b", depends_on=[first.task_id])
    third = client.spawn("c", depends_on=[second.task_id])

    client.fail(claim_one(client).run_id, {"message": "x"})

    for dependent in (second, third):
        task = task_row(client, dependent.task_id)
        assert task["state"] == "failed"
        assert task["error"]["type"] == "DependencyFailed"


def test_spawn_after_a_completed_dependency_is_pending_at_once(client):
    first = client.spawn("a")
    client.complete(claim_one(client).run_id, 1)

    second = client.spawn("b", depends_on=[first.task_id])

    assert task_row(client, second.task_id)["state"] == "pending"


def test_stats_count_every_state(client):
    ids = [s.task_id for s in client.spawn_many([TaskSpec("t") for _ in range(6)])]
    client.spawn("w", depends_on=[ids[4]])
    runs = client.claim(WORKER, 4, 30)
    client.complete(runs[0].run_id)
    client.fail(runs[1].run_id, {"message": "x"}, retryable=False)
    client.cancel(ids[5])

    stats = client.stats()

    assert (stats.waiting, stats.pending, stats.running) == (1, 1, 2)
    assert (stats.completed, stats.failed, stats.cancelled) == (1, 1, 1)
    assert stats.oldest_due_age_s is not None and stats.oldest_due_age_s >= 0
    assert stats.last_completed_at is not None


def test_stats_after_retry_moves_the_count_back(client):
    spawned = client.spawn("t", max_attempts=1)
    client.fail(claim_one(client).run_id, {"message": "x"})
    assert client.stats().failed == 1

    client.retry(spawned.task_id)

    stats = client.stats()
    assert (stats.failed, stats.pending) == (0, 1)


def test_workers_register_and_deregister(client):
    worker_id = uuid.uuid4()
    client.register_worker(worker_id, hostname="h", pid=1, instance="1",
                           concurrency=4, task_names=["t"])
    assert client.stats().live_workers == 1

    client.deregister_worker(worker_id)

    assert client.stats().live_workers == 0


def test_list_filters_by_state_and_name(client):
    client.spawn("a")
    client.spawn("b")
    client.cancel(client.spawn("a").task_id)

    assert [t["task_name"] for t in client.list_tasks(state="pending")] == ["b", "a"]
    assert len(client.list_tasks(task_name="a")) == 2
    assert len(client.list_tasks(limit=1)) == 1
    with pytest.raises(InvalidInput):
        client.list_tasks(state="nonsense")


def test_show_unknown_task_is_not_found(client):
    with pytest.raises(NotFound, match="does not exist"):
        client.show(123456)


def test_every_claimable_transition_notifies_the_queue(client, dsn):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "absurd_test-queue"')
        failed = client.spawn("t", max_attempts=1)
        run = claim_one(client)
        client.fail(run.run_id, {"message": "x"})
        client.retry(failed.task_id)
        client.release([claim_one(client).run_id])

        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=3)]

    assert payloads == ["spawn", "retry", "release"]


def test_spawn_on_a_failed_dependency_is_refused(client, dsn):
    failed = client.spawn("a", max_attempts=1)
    client.fail(claim_one(client).run_id, {"message": "x"})

    with pytest.raises(InvalidInput, match="already ended failed or cancelled"):
        client.spawn("b", depends_on=[failed.task_id])

    assert len(client.list_tasks()) == 1


def test_retry_of_a_dependent_waits_for_its_dependency_to_be_retried(client):
    first = client.spawn("a", max_attempts=1)
    second = client.spawn("b", depends_on=[first.task_id])
    client.fail(claim_one(client).run_id, {"message": "x"})
    assert task_row(client, second.task_id)["state"] == "failed"

    with pytest.raises(InvalidInput, match="retry that first"):
        client.retry(second.task_id)
    client.retry(first.task_id)
    assert client.retry(second.task_id) == "failed"

    assert task_row(client, second.task_id)["state"] == "waiting"
    client.complete(claim_one(client).run_id, "ok")
    assert task_row(client, second.task_id)["state"] == "pending"


def test_a_worker_is_live_while_seen_within_its_lease(client):
    worker_id = uuid.uuid4()
    client.register_worker(worker_id, hostname="h", pid=1, instance=None,
                           concurrency=1, task_names=["t"], lease_s=0.5)
    assert client.stats().live_workers == 1

    time.sleep(0.7)

    assert client.stats().live_workers == 0
    client.heartbeat(worker_id, [], 0.5)
    assert client.stats().live_workers == 1
