"""absurd-worker@ under a real systemd: readiness, restarts, watchdog, stop, journal.

Each test boots its own sandbox, installs absurd with the install command, points
/etc/absurd/absurd.conf at a fresh test database and starts worker instances. Test
tasks are command templates (`sleep`, `false`) from a registry the test writes, so
every handler is a real child process of the worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest

from absurd import schema
from absurd.client import Client
from machine import Machine, host_binds
from pgcluster import PgCluster
from sandbox import Sandbox, wait_until

pytestmark = pytest.mark.systemd

QUEUE = "default"
WATCHDOG_S = 3
LEASE_S = 4
TEST_TASKS = """
[sleep]
command = /bin/sleep {seconds}
timeout = 300
kill_grace = 2

[always-fails]
command = /bin/false
"""
#: Short timings so that each scenario takes seconds, not minutes.
TEST_DROPIN = f"""[Service]
WatchdogSec={WATCHDOG_S}s
TimeoutAbortSec=2s
RestartSec=1s
# A watchdog abort must not leave a core file anywhere.
LimitCORE=0
"""


def start_workers(
    machine: Machine, dsn: str, *instances: int, drain_timeout_s: float = 20
) -> None:
    """Install, configure the test database and registry, start the instances."""
    machine.install()
    machine.sandbox.write("/etc/absurd/test-tasks.conf", TEST_TASKS)
    machine.configure(
        dsn,
        "tasks-config = /etc/absurd/test-tasks.conf\n"
        f"lease = {LEASE_S}\npoll-interval = 1\ndrain-timeout = {drain_timeout_s}\n",
    )
    machine.sandbox.write(
        "/etc/systemd/system/absurd-worker@.service.d/50-test.conf", TEST_DROPIN
    )
    machine.systemctl("daemon-reload")
    if instances:
        machine.systemctl("start", *(f"absurd-worker@{n}.service" for n in instances))


def task_state(client: Client, task_id: int) -> str:
    return client.show(task_id)["state"]


def wait_for_state(client: Client, task_id: int, state: str, timeout_s: float) -> bool:
    return wait_until(lambda: task_state(client, task_id) == state, timeout_s, 0.2)


def instance_running(dsn: str, client: Client, task_id: int) -> str:
    """The worker instance (systemd's %i) that holds the task's current run."""
    run = client.show(task_id)["runs"][-1]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT instance FROM absurd.workers WHERE worker_id = %s",
            (run["worker_id"],),
        ).fetchone()
    return row[0]


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client.connect(dsn, QUEUE) as result:
        yield result


def test_fresh_install_then_start_runs_a_worker(
    machine: Machine, dsn: str, client: Client
) -> None:
    machine.install()
    machine.configure(dsn)
    incoming = "/var/lib/absurd/incoming/2025-01-02T03:04_field.fits"
    machine.sandbox.run("install", "-d", "-o", "absurd", "/var/lib/absurd/incoming")
    machine.sandbox.run("install", "-o", "absurd", "/dev/null", incoming)

    machine.systemctl("start", "absurd-worker@1")

    assert machine.show("absurd-worker@1.service", "ActiveState") == "active"
    assert "free slots" in machine.show("absurd-worker@1.service", "StatusText")
    task_id = client.spawn("organize-files", {
        "files": [incoming], "dest_root": "/var/lib/absurd/products", "action": "move",
    }).task_id
    assert wait_for_state(client, task_id, "completed", 20), client.show(task_id)
    placed = "/var/lib/absurd/products/2025-01-02/images/2025-01-02T03:04_field.fits"
    assert machine.sandbox.path(placed).exists()


def test_two_instances_start_and_become_active(
    machine: Machine, dsn: str, client: Client
) -> None:
    start_workers(machine, dsn, 1, 2)

    for unit in ("absurd-worker@1.service", "absurd-worker@2.service"):
        assert machine.show(unit, "ActiveState") == "active"
    assert client.stats().live_workers == 2
    assert "instance=2" in machine.journal("absurd-worker@2.service")


def test_kill_9_restarts_the_worker_and_its_task_is_recovered(
    machine: Machine, dsn: str, client: Client
) -> None:
    start_workers(machine, dsn, 1, 2)
    task_id = client.spawn("sleep", {"seconds": "6"}).task_id
    assert wait_for_state(client, task_id, "running", 10)
    unit = f"absurd-worker@{instance_running(dsn, client, task_id)}.service"
    victim = machine.main_pid(unit)

    machine.kill(victim, "KILL")

    assert wait_until(lambda: machine.main_pid(unit) not in (0, victim), 15)
    assert machine.wait_for(unit, "ActiveState", "active", 15)
    assert machine.show(unit, "NRestarts") == "1"
    assert wait_for_state(client, task_id, "completed", 40)
    task = client.show(task_id)
    assert [run["state"] for run in task["runs"]] == ["expired", "completed"]


def test_a_stopped_main_loop_is_restarted_by_the_watchdog(
    machine: Machine, dsn: str
) -> None:
    start_workers(machine, dsn, 1)
    unit = "absurd-worker@1.service"
    frozen = machine.main_pid(unit)

    machine.kill(frozen, "STOP")

    assert wait_until(lambda: machine.show(unit, "NRestarts") == "1", 20)
    assert machine.wait_for(unit, "ActiveState", "active", 15)
    assert machine.main_pid(unit) != frozen
    journal = machine.sandbox.run("journalctl", "--unit", unit, "--no-pager").stdout
    assert "Watchdog timeout" in journal
    assert "Failed with result 'watchdog'" in journal


def test_a_task_longer_than_the_watchdog_causes_no_restart(
    machine: Machine, dsn: str, client: Client
) -> None:
    start_workers(machine, dsn, 1)
    task_id = client.spawn("sleep", {"seconds": str(3 * WATCHDOG_S)}).task_id

    assert wait_for_state(client, task_id, "completed", 30)

    assert machine.show("absurd-worker@1.service", "NRestarts") == "0"
    assert machine.show("absurd-worker@1.service", "ActiveState") == "active"
    assert client.show(task_id)["attempts"] == 1


def test_stop_lets_a_running_task_finish_and_exits_0(
    machine: Machine, dsn: str, client: Client
) -> None:
    start_workers(machine, dsn, 1, drain_timeout_s=20)
    unit = "absurd-worker@1.service"
    task_id = client.spawn("sleep", {"seconds": "4"}).task_id
    assert wait_for_state(client, task_id, "running", 10)

    machine.systemctl("stop", "--no-block", unit)

    assert wait_until(
        lambda: machine.show(unit, "StatusText").startswith("stopping: draining 1"), 5
    ), machine.show(unit, "StatusText")
    assert machine.show(unit, "ActiveState") == "deactivating"
    assert machine.wait_for(unit, "ActiveState", "inactive", 20)
    assert task_state(client, task_id) == "completed"
    assert machine.show(unit, "Result") == "success"
    assert machine.show(unit, "ExecMainStatus") == "0"


def test_stop_releases_a_task_that_outlasts_the_drain_timeout(
    machine: Machine, dsn: str, client: Client
) -> None:
    start_workers(machine, dsn, 1, drain_timeout_s=2)
    task_id = client.spawn("sleep", {"seconds": "120"}).task_id
    assert wait_for_state(client, task_id, "running", 10)

    started = time.monotonic()
    machine.systemctl("stop", "absurd-worker@1")
    stopped_after_s = time.monotonic() - started

    assert stopped_after_s < 90  # TimeoutStopSec: systemd did not have to kill it
    task = client.show(task_id)
    assert task["state"] == "pending"
    assert task["runs"][-1]["state"] == "released"
    assert machine.show("absurd-worker@1.service", "Result") == "success"
    assert machine.show("absurd-worker@1.service", "ExecMainStatus") == "0"


def journal_entries(machine: Machine, *args: str) -> list[dict[str, str]]:
    lines = machine.sandbox.run(
        "journalctl", "--unit", "absurd-worker@1.service", "--output", "json",
        "--no-pager", *args,
    ).stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_journal_shows_worker_warnings_with_their_priority(
    machine: Machine, dsn: str, client: Client
) -> None:
    start_workers(machine, dsn, 1)
    task_id = client.spawn("always-fails", max_attempts=2).task_id
    assert wait_for_state(client, task_id, "failed", 20)

    warnings = journal_entries(machine, "--priority", "warning")

    about_task = {e["MESSAGE"]: e["PRIORITY"] for e in warnings
                  if f"task_id={task_id} " in e["MESSAGE"] + " "}
    retrying = [m for m in about_task if "outcome=retrying" in m]
    failed = [m for m in about_task if "outcome=failed" in m]
    assert retrying and about_task[retrying[0]] == "4", warnings
    assert failed and about_task[failed[0]] == "3", warnings
    assert not any("task started" in m for m in about_task)
    started = [e for e in journal_entries(machine) if "task started" in e["MESSAGE"]]
    assert started and {e["PRIORITY"] for e in started} == {"6"}
    assert all(e["SYSLOG_IDENTIFIER"] == "absurd-worker@1" for e in started)


@pytest.fixture
def outage_machine(own_cluster: PgCluster) -> Iterator[Machine]:
    """A sandbox whose test database runs on a server the test may stop."""
    sandbox = Sandbox(host_binds(own_cluster))
    try:
        sandbox.boot()
        yield Machine(sandbox)
    finally:
        sandbox.shutdown()


def test_ready_waits_for_the_first_database_round_trip(
    outage_machine: Machine, own_cluster: PgCluster
) -> None:
    dsn = own_cluster.create_database("late")
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.migrate(conn)
    own_cluster.stop("immediate")
    unit = "absurd-worker@1.service"
    try:
        start_workers(outage_machine, dsn)
        outage_machine.systemctl("start", "--no-block", unit)
        assert wait_until(lambda: "waiting for the database"
                          in outage_machine.show(unit, "StatusText"), 15)
        assert outage_machine.show(unit, "ActiveState") == "activating"
    finally:
        own_cluster.start()

    assert outage_machine.wait_for(unit, "ActiveState", "active", 20)
    assert outage_machine.show(unit, "NRestarts") == "0"


def test_database_outage_keeps_the_worker_alive_and_says_so(
    outage_machine: Machine, own_cluster: PgCluster
) -> None:
    dsn = own_cluster.create_database("outage")
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.migrate(conn)
    start_workers(outage_machine, dsn, 1)
    unit = "absurd-worker@1.service"

    own_cluster.stop("immediate")
    try:
        assert wait_until(
            lambda: "unreachable" in outage_machine.show(unit, "StatusText"), 20
        ), outage_machine.show(unit, "StatusText")
        time.sleep(2 * WATCHDOG_S)  # longer than WatchdogSec: it keeps pinging
        assert outage_machine.show(unit, "NRestarts") == "0"
    finally:
        own_cluster.start()

    assert wait_until(
        lambda: "unreachable" not in outage_machine.show(unit, "StatusText"), 30
    )
    assert outage_machine.show(unit, "ActiveState") == "active"
