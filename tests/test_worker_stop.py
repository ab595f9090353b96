"""Timeouts and cancellation stop the work: child process trees die, threads are told,
and an outcome that comes late is discarded."""

from __future__ import annotations

import time
from pathlib import Path

from test_worker_outcomes import finished
from workerproc import pid_alive, start_worker, tasks_config, wait_for  # noqa: F401


def started_pid(marks: Path, task_id: int, attempt: int = 1) -> int:
    mark = marks / f"{task_id}-{attempt}-started"
    return int(wait_for(lambda: mark.exists() and mark.read_text(), 15,
                        f"attempt {attempt} of task {task_id} to start"))


def test_a_child_tree_that_ignores_sigterm_is_killed_on_timeout(
        client, start_worker, tmp_path):
    worker = start_worker()
    pids_file = tmp_path / "pids"
    task_id = client.spawn("stubborn-tree", {"pids": str(pids_file)}, timeout_s=1,
                           max_attempts=1).task_id
    child, grandchild = map(int, wait_for(
        lambda: pids_file.exists() and pids_file.read_text().split(), 15,
        "the tree to start"))

    task = finished(client, task_id)

    assert task["state"] == "failed"
    assert task["error"]["type"] == "TaskTimeout"
    assert "timeout of 1s" in task["error"]["message"]
    assert not pid_alive(child) and not pid_alive(grandchild)
    assert "task timed out, stopping it" in worker.log()


def test_a_cancelled_child_process_stops_within_two_seconds(
        client, start_worker, tmp_path):
    start_worker()
    task_id = client.spawn("sleep-process", {"seconds": 60, "marks": str(tmp_path)},
                           max_attempts=1).task_id
    pid = started_pid(tmp_path, task_id)
    wait_for(lambda: client.show(task_id)["progress"] == "sleeping", 5,
             "the child's progress message to reach the task")

    cancelled_at = time.monotonic()
    assert client.cancel(task_id) == "running"
    wait_for(lambda: not pid_alive(pid), 2, "the child to stop")
    task = wait_for(lambda: (t := client.show(task_id))["runs"][0]["state"] !=
                    "running" and t, 5, "the run to end")

    assert time.monotonic() - cancelled_at < 2.5
    assert task["state"] == "cancelled"
    assert task["runs"][0]["state"] == "cancelled"
    assert task["result"] is None


def test_a_cancelled_thread_handler_sees_the_flag_and_stops(
        client, start_worker, tmp_path):
    start_worker()
    task_id = client.spawn("sleep", {"seconds": 60, "marks": str(tmp_path)}).task_id
    started_pid(tmp_path, task_id)
    wait_for(lambda: client.show(task_id)["progress"] == "sleeping", 5,
             "the handler's progress message to reach the task")

    client.cancel(task_id)
    task = wait_for(lambda: (t := client.show(task_id))["runs"][0]["state"] !=
                    "running" and t, 2, "the run to stop")

    assert task["state"] == "cancelled" and task["runs"][0]["state"] == "cancelled"
    assert not (tmp_path / f"{task_id}-1-finished").exists()


def test_a_cancelled_task_stays_cancelled_when_its_handler_returns_later(
        client, start_worker, tmp_path):
    worker = start_worker()
    task_id = client.spawn("stubborn", {"seconds": 2, "marks": str(tmp_path)}).task_id
    started_pid(tmp_path, task_id)

    client.cancel(task_id)
    wait_for(lambda: (tmp_path / f"{task_id}-1-finished").exists(), 10,
             "the handler to return")
    task = wait_for(lambda: (t := client.show(task_id))["runs"][0]["state"] !=
                    "running" and t, 5, "the run to end")

    assert task["state"] == "cancelled"
    assert task["result"] is None
    assert task["runs"][0]["state"] == "cancelled"
    assert "outcome=cancelled" in worker.log()


def test_a_thread_handler_past_its_timeout_has_its_late_result_discarded(
        client, start_worker, tmp_path):
    start_worker()
    task_id = client.spawn("stubborn", {"seconds": 2, "marks": str(tmp_path)},
                           timeout_s=0.5, max_attempts=1).task_id

    task = finished(client, task_id)

    assert (tmp_path / f"{task_id}-1-finished").exists()  # it did return a result
    assert task["state"] == "failed" and task["result"] is None
    assert task["error"]["type"] == "TaskTimeout"


def test_a_thread_that_ignores_its_timeout_fails_without_a_second_attempt(
        client, start_worker, tmp_path, tasks_config):
    tasks_config.write_text(tasks_config.read_text().replace(
        "handler = handlers:sleep_ignoring_stop\nkill_grace = 5",
        "handler = handlers:sleep_ignoring_stop\nkill_grace = 0.5"))
    worker = start_worker()
    task_id = client.spawn("stubborn", {"seconds": 3, "marks": str(tmp_path)},
                           timeout_s=0.5, max_attempts=5).task_id

    task = finished(client, task_id)

    assert task["state"] == "failed" and task["attempts"] == 1
    assert "two attempts never run at once" in task["error"]["message"]
    assert not (tmp_path / f"{task_id}-1-finished").exists()
    wait_for(lambda: "late outcome discarded" in worker.log(), 10, "the late outcome")
