"""scripts/run_absurd_worker.py: its settings, and its exit codes."""

from __future__ import annotations

import importlib.util
import signal
import time

from pgcluster import free_port
from workerproc import SCRIPT, start_worker, tasks_config, wait_for  # noqa: F401

spec = importlib.util.spec_from_file_location("run_absurd_worker", SCRIPT)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_the_instance_is_found_before_parsing_to_choose_its_config_file():
    assert script.instance_from(["--instance", "3"], {}) == "3"
    assert script.instance_from(["--queue", "q", "--instance=gpu"], {}) == "gpu"
    assert script.instance_from([], {"ABSURD_INSTANCE": "2"}) == "2"
    assert script.instance_from(["--instance", "4"], {"ABSURD_INSTANCE": "2"}) == "4"
    assert script.instance_from([], {}) is None

    parser = script.build_parser("3")
    assert "/etc/absurd/worker@3.conf" in parser._default_config_files


def test_settings_come_from_file_then_environment_then_flags(
        client, start_worker, tmp_path):
    conf = tmp_path / "absurd.conf"
    conf.write_text("concurrency = 2\nlease = 9\npoll-interval = 3\n")

    start_worker("-c", str(conf), "--lease", "12",
                 env={"ABSURD_CONCURRENCY": "3", "ABSURD_POLL_INTERVAL": "4"})
    worker = client.conn.execute(
        "SELECT concurrency FROM absurd.workers").fetchone()

    assert worker == (3,)
    log = (tmp_path / "worker0.log").read_text()
    assert "concurrency=3 lease=12s poll_interval=4s" in log


def test_configuration_errors_exit_2(start_worker, tmp_path, dsn, empty_dsn):
    nothing_loads = tmp_path / "nothing.conf"
    nothing_loads.write_text("[a]\nhandler = no_such_module:f\n")
    not_text = tmp_path / "binary.conf"
    not_text.write_bytes(b"\xff\xfe[a]\n")
    cases = {
        ("--tasks-config", str(tmp_path / "missing.conf")): "cannot read the tasks",
        ("--tasks-config", str(nothing_loads)): "no handler of the tasks config",
        ("--tasks-config", str(not_text)): "is not UTF-8 text",
        ("--queue", "Bad Queue"): "invalid queue name",
        ("--lease", "0.5"): "shorter cannot be renewed reliably",
        ("--lease", "100000"): "longer hides a dead worker's tasks",
        ("--concurrency", "0"): "must be at least 1",
    }
    for args, complaint in cases.items():
        worker = start_worker(*args, ready=False)
        assert worker.wait(30) == script.EXIT_CONFIG, args
        assert complaint in worker.log(), worker.log()

    unmigrated = start_worker(database=empty_dsn, ready=False)
    assert unmigrated.wait(30) == script.EXIT_CONFIG
    assert "run 'absurdctl.py migrate' first" in unmigrated.log()


def test_a_database_unreachable_past_the_startup_timeout_exits_3(start_worker):
    nowhere = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x"

    worker = start_worker("--startup-timeout", "1", database=nowhere, ready=False)

    assert worker.wait(30) == script.EXIT_DATABASE
    assert "giving up on the database" in worker.log()


def test_sigterm_while_waiting_for_the_database_exits_0(start_worker):
    nowhere = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x"
    worker = start_worker(database=nowhere, ready=False)
    wait_for(lambda: "database unavailable at startup" in worker.log(), 15,
             "the first retry")

    signalled_at = time.monotonic()
    worker.send(signal.SIGTERM)

    assert worker.wait(10) == script.EXIT_OK
    assert time.monotonic() - signalled_at < 3
