"""A real worker process runs tasks to their outcomes, and logs each start and end."""

from __future__ import annotations

import re
import signal

from workerproc import start_worker, tasks_config, wait_for  # noqa: F401

from absurd.client import TERMINAL_STATES


def finished(client, task_id: int, timeout: float = 15) -> dict:
    return wait_for(
        lambda: (task := client.show(task_id))["state"] in TERMINAL_STATES and task,
        timeout, f"task {task_id} to end")


def test_results_complete_tasks_and_each_start_and_end_is_logged(client, start_worker):
    worker = start_worker()
    first = client.spawn("echo", {"observation": "2025-10-05T11:32"}).task_id
    second = client.spawn("echo", {"n": 2}, depends_on=[first]).task_id
    third = client.spawn("async-echo", {"n": 3}).task_id

    assert finished(client, first)["result"]["params"] == {"observation":
                                                           "2025-10-05T11:32"}
    assert finished(client, second)["result"]["dependencies"] == {
        str(first): {"params": {"observation": "2025-10-05T11:32"}, "attempt": 1,
                     "task_id": first, "dependencies": {}}}
    assert finished(client, third)["result"] == {"async": True, "params": {"n": 3}}

    log = wait_for(lambda: worker.log().count("task ended") == 3 and worker.log(), 5,
                   "three end lines")
    fields = (rf"queue=test-queue task=echo task_id={first} run_id=\d+ attempt=1")
    assert re.search(rf"INFO absurd.worker: task started {fields}\n", log)
    assert re.search(rf"task ended {fields} outcome=completed duration=\d+\.\d+s", log)


def test_an_exception_fails_the_attempt_with_type_message_and_traceback(
        client, start_worker):
    start_worker()
    task_id = client.spawn("fail", {"garbage": True},
                           max_attempts=2, backoff_base_s=0.1).task_id

    task = finished(client, task_id)

    assert task["state"] == "failed" and task["attempts"] == 2
    assert task["error"]["type"] == "ValueError"
    assert task["error"]["message"] == "badinput \ufffd here"
    assert 'in fail\n    raise ValueError' in task["error"]["traceback"]
    assert [run["state"] for run in task["runs"]] == ["failed", "failed"]


def test_a_permanent_failure_is_not_retried(client, start_worker):
    start_worker()
    task_id = client.spawn("permanent", max_attempts=5).task_id

    task = finished(client, task_id)

    assert task["state"] == "failed" and task["attempts"] == 1
    assert task["error"]["type"] == "PermanentFailure"


def test_a_result_that_is_not_json_fails_the_task_with_a_clear_error(
        client, start_worker):
    start_worker()
    nan = client.spawn("bad-result", {"kind": "nan"}).task_id
    unserialisable = client.spawn("bad-result", {"kind": "object"}).task_id

    assert finished(client, nan)["error"]["type"] == "InvalidResult"
    assert "NaN" in finished(client, nan)["error"]["message"]
    assert "not JSON-serialisable" in finished(client, unserialisable)["error"][
        "message"]
    assert finished(client, unserialisable)["attempts"] == 1


def test_a_command_exit_fails_with_its_status_and_stderr_tail(client, start_worker):
    start_worker()
    retried = client.spawn("exit", {"code": 3, "message": "x" * 9000 + "the end"},
                           max_attempts=2, backoff_base_s=0.1).task_id
    permanent = client.spawn("exit", {"code": 64, "message": "usage: wrong"},
                             max_attempts=5).task_id
    succeeded = client.spawn("exit", {"code": 0, "message": "fine"}).task_id

    task = finished(client, retried)
    assert task["attempts"] == 2
    assert task["error"]["exit_status"] == 3
    assert task["error"]["message"].endswith("exited with status 3")
    assert task["error"]["stderr_tail"].endswith("xxthe end")
    assert len(task["error"]["stderr_tail"]) <= 4000
    assert finished(client, permanent)["attempts"] == 1
    assert finished(client, permanent)["error"]["stderr_tail"] == "usage: wrong"
    assert finished(client, succeeded)["result"] == {"exit_status": 0}


def test_a_command_missing_a_param_fails_at_once(client, start_worker):
    start_worker()
    task_id = client.spawn("exit", {"code": 1}, max_attempts=5).task_id

    task = finished(client, task_id)

    assert task["attempts"] == 1
    assert task["error"]["type"] == "MissingParam"
    assert "'message'" in task["error"]["message"]


def test_process_mode_runs_the_handler_in_a_child_process(client, start_worker):
    worker = start_worker()
    task_id = client.spawn("child").task_id

    task = finished(client, task_id)

    assert task["state"] == "completed"
    assert task["result"]["pid"] != worker.pid


def test_task_names_without_a_loaded_handler_are_never_claimed(client, start_worker):
    worker = start_worker()
    unloadable = client.spawn("unloadable").task_id
    no_tool = client.spawn("missing-tool", {"file": "x"}).task_id
    unknown = client.spawn("not-in-the-registry").task_id
    after = client.spawn("noop").task_id

    assert finished(client, after)["state"] == "completed"
    assert {client.show(t)["state"] for t in (unloadable, no_tool, unknown)} == {
        "pending"}
    log = worker.log()
    assert re.search(r"handler not loaded \(cannot load no_such_module:handler.*\), "
                     r"tasks of this name are not claimed queue=test-queue "
                     r"task=unloadable\n", log)
    assert re.search(r"handler not loaded \(program /nonexistent/tool is missing.*"
                     r"task=missing-tool\n", log)


def test_worker_registers_and_deregisters_one_identity_per_process(
        client, start_worker):
    first = start_worker("--instance", "7")
    second = start_worker("--instance", "7")
    rows = client.conn.execute(
        "SELECT worker_id, pid, instance, stopped_at FROM absurd.workers "
        "ORDER BY started_at").fetchall()

    assert len({row[0] for row in rows}) == 2
    assert [row[1] for row in rows] == [first.pid, second.pid]
    assert {row[2] for row in rows} == {"7"}
    first.send(signal.SIGTERM)
    assert first.wait(10) == 0
    stopped = client.conn.execute(
        "SELECT pid FROM absurd.workers WHERE stopped_at IS NOT NULL").fetchall()
    assert stopped == [(first.pid,)]


def test_under_journald_each_line_carries_its_priority(client, start_worker):
    worker = start_worker(env={"JOURNAL_STREAM": "8:12345"})
    task_id = client.spawn("fail", max_attempts=1).task_id
    finished(client, task_id)

    log = wait_for(lambda: "task ended" in worker.log() and worker.log(), 5, "end")
    assert re.search(rf"^<6>absurd.worker: task started queue=test-queue task=fail "
                     rf"task_id={task_id}", log, re.M)
    assert re.search(r"^<3>absurd.worker: task ended .* outcome=failed", log, re.M)
    assert all(line.startswith("<") for line in log.splitlines() if line)


def test_a_task_python_cannot_decode_fails_alone_and_the_worker_goes_on(
        client, dsn, start_worker):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        poison = conn.execute(
            "SELECT task_id FROM absurd.spawn('test-queue', 'echo', "
            "jsonb_build_object('n', ('1' || repeat('0', 5000))::numeric))"
        ).fetchone()[0]
    healthy = [client.spawn("echo", {"n": n}).task_id for n in range(3)]
    worker = start_worker()

    assert finished(client, poison)["error"]["type"] == "UnreadableTask"
    assert finished(client, poison)["attempts"] == 1
    for task_id in healthy:
        assert finished(client, task_id)["state"] == "completed"
    assert worker.process.poll() is None
