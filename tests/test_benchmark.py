"""The benchmark script, run for real against the test server.

Each test runs scripts/benchmark_absurd.py as a process on a fresh database, with a
small subset of the benchmarks so that the suite stays short. Figures are checked for
shape and sense, never for speed: performance is the script's output, not a test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgcluster import SCHEMA_TEMPLATE, PgCluster

from absurd.client import Client

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "benchmark_absurd.py"
CLIENT_ROWS = ["spawn_single", "spawn_batch", "claim_single", "complete_single",
               "claim_batch", "complete_batch", "queue_stats"]
WORKER_ROWS = ["e2e_latency", "concurrent_2x4", "burst", "sustained", "crash_recovery"]
#: Small sizes for the client-level benchmarks, so that one run takes seconds.
CLIENT_ONLY = ["--quick", "--only", "spawn,claim,complete,stats", "--table-rows",
               "2000"]


def benchmark(dsn: str, *args: str, timeout: float = 240
              ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dsn", dsn, "--log-level", "WARNING", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def load_script():
    """The script as a module, for its exit codes and pure functions."""
    if "benchmark_absurd" not in sys.modules:
        spec = importlib.util.spec_from_file_location("benchmark_absurd", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmark_absurd"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["benchmark_absurd"]


def rows_by_name(document: dict) -> dict[str, dict]:
    return {row["name"]: row for row in document["results"]}


def queue_rows(dsn: str, queue: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM absurd.tasks WHERE queue = %(q)s)"
            " + (SELECT count(*) FROM absurd.workers WHERE queue = %(q)s)"
            " + (SELECT count(*) FROM absurd.queue_counts WHERE queue = %(q)s)",
            {"q": queue},
        ).fetchone()[0]


@pytest.fixture(scope="module")
def shared_dsn(pg_cluster: PgCluster) -> str:
    """One database for the tests that read the same benchmark run."""
    return pg_cluster.create_database("benchmark_shared", template=SCHEMA_TEMPLATE)


@pytest.fixture(scope="module")
def client_results(shared_dsn: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[subprocess.CompletedProcess, Path]:
    """One run of the client-level benchmarks with --json, shared by several tests."""
    path = tmp_path_factory.mktemp("benchmark") / "results.json"
    done = benchmark(shared_dsn, *CLIENT_ONLY, "--json", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    return done, path


def test_client_benchmarks_print_and_save_every_row(client_results):
    done, path = client_results
    document = json.loads(path.read_text())
    rows = rows_by_name(document)

    assert list(rows) == CLIENT_ROWS
    assert "BENCHMARK SUMMARY" in done.stdout
    for name, row in rows.items():
        assert name in done.stdout
        assert row["tasks"] > 0 and row["duration_s"] > 0
        assert row["throughput"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["success_rate"] == 100.0
    assert rows["queue_stats"]["history_rows"] == 2000
    assert rows["spawn_batch"]["tasks"] == 50_000


def test_results_record_the_environment(client_results):
    document = json.loads(client_results[1].read_text())
    env = document["environment"]

    assert env["postgresql"].startswith("PostgreSQL")
    assert env["settings"]["synchronous_commit"] in ("on", "off", "local",
                                                     "remote_write", "remote_apply")
    assert env["cpu_count"] >= 1
    assert "git_revision" in env
    assert document["mode"] == "quick"
    assert "password" not in document["database"]


def test_the_benchmark_queue_is_empty_afterwards(shared_dsn, client_results):
    document = json.loads(client_results[1].read_text())

    assert document["queue"].startswith("benchmark-")
    assert queue_rows(shared_dsn, document["queue"]) == 0


def test_compare_against_its_own_results_passes(dsn, client_results):
    baseline = client_results[1]

    # A generous tolerance: two runs on a shared machine differ by chance.
    done = benchmark(dsn, *CLIENT_ONLY, "--compare", str(baseline), "--tolerance", "20")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no regression" in done.stdout


def test_doctored_baseline_fails_with_the_regressions_listed(dsn, client_results,
                                                             tmp_path):
    document = json.loads(client_results[1].read_text())
    for row in document["results"]:
        row["throughput"] *= 1000
        for name in ("p50_ms", "p95_ms", "p99_ms"):
            row[name] /= 1000
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(document))

    done = benchmark(dsn, *CLIENT_ONLY, "--compare", str(doctored))

    assert done.returncode == load_script().EXIT_REGRESSION, done.stdout + done.stderr
    for name in CLIENT_ROWS:
        assert f"REGRESSION {name} throughput" in done.stdout


def test_an_unreadable_baseline_is_refused_before_running(dsn, tmp_path):
    baseline = tmp_path / "not-results.json"
    baseline.write_text('{"results": []}')

    done = benchmark(dsn, *CLIENT_ONLY, "--compare", str(baseline))

    assert done.returncode == 2
    assert "not a results file" in done.stderr
    assert "BENCHMARK SUMMARY" not in done.stdout


def test_an_impossible_target_exits_non_zero(dsn):
    done = benchmark(dsn, "--quick", "--only", "spawn", "--targets",
                     "--target-success", "100")

    assert done.returncode == load_script().EXIT_TARGET_MISSED, done.stdout
    assert "MISSED spawn_single success 100.0% is not above 100%" in done.stdout


def test_a_queue_in_use_is_refused_and_left_alone(dsn, client: Client):
    task = client.spawn("imaging")

    done = benchmark(dsn, "--quick", "--only", "spawn", "--queue", client.queue)

    assert done.returncode == 2
    assert f"queue {client.queue} is in use" in done.stderr
    assert client.show(task.task_id)["state"] == "pending"


def test_the_configured_queue_is_not_the_benchmark_queue(dsn, client: Client,
                                                         tmp_path):
    client.spawn("imaging")
    settings = tmp_path / "absurd.conf"
    settings.write_text(f"queue = {client.queue}\n")

    done = benchmark(dsn, "--quick", "--only", "spawn", "-c", str(settings),
                     "--json", str(tmp_path / "r.json"))

    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["queue"] != client.queue
    assert client.stats().pending == 1


def test_a_database_without_the_schema_is_refused(empty_dsn):
    done = benchmark(empty_dsn, "--quick", "--only", "spawn")

    assert done.returncode == load_script().EXIT_SCHEMA
    assert "absurdctl.py migrate" in done.stderr


@pytest.mark.slow
def test_worker_benchmarks_lose_nothing_and_finish_nothing_twice(dsn, tmp_path):
    path = tmp_path / "workers.json"

    done = benchmark(
        dsn, "--quick", "--only", "latency,concurrent,burst,sustained,crash",
        "--workers", "2", "--tasks", "1000", "--sustain", "20", "--duration", "2",
        "--json", str(path),
    )

    assert done.returncode == 0, done.stdout + done.stderr
    rows = rows_by_name(json.loads(path.read_text()))
    assert list(rows) == WORKER_ROWS
    for name, row in rows.items():
        assert row["success_rate"] == 100.0, name
        assert row.get("lost_tasks", 0) == 0, name
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], name
    assert rows["crash_recovery"]["double_outcomes"] == 0
    assert rows["crash_recovery"]["killed_running"] > 0
    assert rows["crash_recovery"]["recovery_s"] > 0
    assert rows["e2e_latency"]["pickup_p50_ms"] > 0
    assert rows["concurrent_2x4"]["tasks"] == 1000
    assert rows["sustained"]["achieved_rate"] > 0
    with psycopg.connect(dsn) as conn:
        workers_connected = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE 'absurd-worker%'"
        ).fetchone()[0]
    assert workers_connected == 0


def test_percentile_is_nearest_rank():
    script = load_script()

    assert script.percentile([], 50) is None
    assert script.percentile([5.0], 99) == 5.0
    assert script.percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert script.percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_regression_rule_uses_direction_tolerance_and_slack():
    script = load_script()
    throughput, p95 = script.FIGURES["throughput"], script.FIGURES["p95_ms"]
    success = script.FIGURES["success_rate"]

    assert script.is_regression(throughput, 1000.0, 700.0, 0.25)
    assert not script.is_regression(throughput, 1000.0, 800.0, 0.25)
    assert not script.is_regression(throughput, 1000.0, 5000.0, 0.25)
    assert script.is_regression(p95, 10.0, 20.0, 0.25)
    assert not script.is_regression(p95, 0.2, 0.9, 0.25)  # within timer noise
    assert script.is_regression(success, 100.0, 99.0, 0.25)
    assert not script.is_regression(success, 100.0, 99.8, 0.25)


def test_unknown_benchmark_names_are_refused(dsn):
    done = benchmark(dsn, "--only", "spawn,teleport")

    assert done.returncode == 2
    assert "unknown benchmark teleport" in done.stderr
