"""Workers killed, stopped and starved: nothing is lost, nothing runs twice at once."""

from __future__ import annotations

import re
import signal
import time

from test_worker_outcomes import finished
from test_worker_stop import started_pid
from workerproc import pid_alive, start_worker, tasks_config, wait_for  # noqa: F401

#: A short lease, so that a killed worker's task is recovered within seconds.
SHORT_LEASE = ("--lease", "1")


def test_a_task_whose_worker_is_killed_is_completed_by_another_with_one_retry(
        client, start_worker, tmp_path):
    task_id = client.spawn("hang", {"finish_on_attempt": 2, "marks": str(tmp_path)},
                           backoff_base_s=0.1).task_id
    doomed = start_worker(*SHORT_LEASE)
    started_pid(tmp_path, task_id, attempt=1)

    doomed.kill()
    start_worker(*SHORT_LEASE)
    task = finished(client, task_id)

    assert task["state"] == "completed"
    assert task["result"] == {"finished_on_attempt": 2}
    assert task["retry_count"] == 1
    assert [run["state"] for run in task["runs"]] == ["expired", "completed"]


def test_three_crashes_leave_a_retry_count_of_three(client, start_worker, tmp_path):
    task_id = client.spawn("hang", {"finish_on_attempt": 4, "marks": str(tmp_path)},
                           backoff_base_s=0.1).task_id

    for attempt in (1, 2, 3):
        doomed = start_worker(*SHORT_LEASE)
        started_pid(tmp_path, task_id, attempt=attempt)
        doomed.kill()
    start_worker(*SHORT_LEASE)
    task = finished(client, task_id)

    assert task["state"] == "completed"
    assert task["retry_count"] == 3
    assert [run["state"] for run in task["runs"]] == ["expired"] * 3 + ["completed"]


def test_sigterm_with_five_tasks_in_hand_loses_none(client, start_worker, tmp_path):
    stopping = start_worker("--concurrency", "5", "--drain-timeout", "3")
    quick = [client.spawn("sleep", {"seconds": 1.5, "marks": str(tmp_path)}).task_id
             for _ in range(2)]
    slow = [client.spawn("sleep", {"seconds": 30, "marks": str(tmp_path)}).task_id
            for _ in range(2)]
    slow.append(client.spawn("sleep-process",
                             {"seconds": 30, "marks": str(tmp_path)}).task_id)
    child_pid = started_pid(tmp_path, slow[-1])
    for task_id in quick + slow:
        started_pid(tmp_path, task_id)

    stopping.send(signal.SIGTERM)
    assert stopping.wait(15) == 0

    states = {t: client.show(t) for t in quick + slow}
    assert {states[t]["state"] for t in quick} == {"completed"}
    assert {states[t]["state"] for t in slow} == {"pending"}
    assert {states[t]["attempts"] for t in slow} == {0}
    assert {states[t]["runs"][0]["state"] for t in slow} == {"released"}
    assert not pid_alive(child_pid)
    log = stopping.log()
    assert "stopping: no more claims, draining 5 tasks for up to 3s" in log
    assert log.count("outcome=released") == 3

    client.conn.execute("UPDATE absurd.tasks SET params = params || "
                        "'{\"seconds\": 0.1}'")
    start_worker("--concurrency", "5")
    for task_id in slow:
        task = finished(client, task_id)
        assert task["state"] == "completed" and task["attempts"] == 1


def test_a_second_sigterm_releases_at_once(client, start_worker, tmp_path):
    stopping = start_worker("--drain-timeout", "60")
    task_ids = [client.spawn(name, {"seconds": 60, "marks": str(tmp_path)}).task_id
                for name in ("sleep", "sleep-process", "stubborn")]
    pids = [started_pid(tmp_path, t) for t in task_ids]

    stopping.send(signal.SIGTERM)
    wait_for(lambda: "draining 3 tasks" in stopping.log(), 5, "the drain to start")
    signalled_at = time.monotonic()
    stopping.send(signal.SIGTERM)

    assert stopping.wait(10) == 0
    assert time.monotonic() - signalled_at < 5
    assert {client.show(t)["state"] for t in task_ids} == {"pending"}
    assert not pid_alive(pids[1])
    assert "second stop signal: releasing 3 tasks now" in stopping.log()


def test_leases_are_renewed_while_a_task_outlives_them(client, start_worker, tmp_path):
    start_worker(*SHORT_LEASE)
    start_worker(*SHORT_LEASE)  # would recover the task if its lease lapsed
    task_id = client.spawn("sleep", {"seconds": 3.5, "marks": str(tmp_path)}).task_id

    task = finished(client, task_id)

    assert task["state"] == "completed" and task["attempts"] == 1
    assert [run["state"] for run in task["runs"]] == ["completed"]


def test_a_handler_holding_the_gil_past_its_lease_has_its_late_completion_refused(
        client, start_worker, tmp_path):
    lease = ("--lease", "5", "--concurrency", "1")
    hog = start_worker(*lease)
    task_id = client.spawn("hold-gil", {"seconds": 20, "marks": str(tmp_path)},
                           backoff_base_s=0.1).task_id
    assert started_pid(tmp_path, task_id, attempt=1) == hog.pid
    rescuer = start_worker(*lease)

    task = wait_for(lambda: (t := client.show(task_id))["state"] == "completed" and t,
                    30, "the task to be recovered and completed elsewhere")
    # The hog learns it lost the lease from a heartbeat (outcome=lost) or from the
    # refused completion (outcome=stale), whichever its loop reaches first.
    late = wait_for(lambda: re.search(r"task_id=\d+ run_id=1 attempt=1 "
                                      r"outcome=(lost|stale)", hog.log()),
                    40, "the late outcome")

    assert task["result"]["attempt"] == 2 and task["result"]["pid"] == rescuer.pid
    runs = client.show(task_id)["runs"]
    assert [run["state"] for run in runs] == ["expired", "completed"]
    assert client.show(task_id)["result"] == task["result"]
    assert hog.process.poll() is None
