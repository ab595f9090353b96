#!/usr/bin/env python3
"""benchmark_absurd: measure the queue end to end, with real worker processes.

    benchmark_absurd.py --quick                      the whole run in under a minute
    benchmark_absurd.py --json results.json          every figure and the environment
    benchmark_absurd.py --compare last-good.json     regressions listed, exit non-zero
    benchmark_absurd.py --targets                    production targets, exit non-zero
    benchmark_absurd.py --only spawn,claim,complete  a subset of the benchmarks

It works against the configured database, or the embedded default when none is
configured, in a queue of its own (``benchmark-<random>`` unless --queue names an
unused one), and deletes every row of that queue when it ends. The queue named in
absurd.conf or ABSURD_QUEUE serves the workers and is never used.

Exit codes: see EXIT_CODES below and the README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from tabulate import tabulate

from absurd import config, journal, schema
from absurd.client import TERMINAL_STATES, Client, TaskSpec
from absurd.database import redact
from absurd.errors import AbsurdError, ConfigError, DatabaseUnavailable, SchemaMismatch

EXIT_OK = 0
EXIT_BENCHMARK_FAILED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_SCHEMA = 4
EXIT_REGRESSION = 5
EXIT_TARGET_MISSED = 6
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "every benchmark ran; no regression, no target missed",
    EXIT_BENCHMARK_FAILED: "a benchmark failed: tasks lost, run twice, or an error",
    EXIT_USAGE: "bad command line, configuration or baseline file",
    EXIT_DATABASE: "database unreachable",
    EXIT_SCHEMA: "database schema missing or not current: run absurdctl.py migrate",
    EXIT_REGRESSION: "a figure regressed beyond the tolerance against --compare",
    EXIT_TARGET_MISSED: "a production target was missed (--targets)",
    EXIT_INTERRUPTED: "interrupted; the benchmark queue was cleaned up",
}

REPO = Path(__file__).resolve().parent.parent
WIDTH = 80
#: Version of the --json layout, so that --compare can refuse a file it cannot read.
RESULTS_FORMAT = 1
#: PostgreSQL settings recorded with every run: the ones that move the figures most.
RECORDED_SETTINGS = (
    "server_version", "synchronous_commit", "fsync", "full_page_writes", "wal_level",
    "shared_buffers", "work_mem", "max_connections", "max_wal_size", "jit",
)
#: Task names the benchmark's worker registry maps to absurd.benchmark_tasks.
NOOP, STAMP, SLEEP = "bench.noop", "bench.stamp", "bench.sleep"
#: Tasks per spawn_many() call when filling the queue for a benchmark.
FILL_BATCH = 10_000
#: Runs per claim or complete_many() call in the batched benchmarks.
RUN_BATCH = 100
#: Lease of client-level claims: long enough that nothing expires mid-benchmark.
CLIENT_LEASE_S = 300.0


# ------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """How one figure of a result is compared: which way is better, and its noise."""

    better: str  # "higher" or "lower"
    #: Differences smaller than this never count as a regression (timer noise).
    slack: float
    #: False: compared by absolute difference only (success rate in points).
    relative: bool = True


FIGURES = {
    "throughput": Figure("higher", 0.0),
    "p50_ms": Figure("lower", 1.0),
    "p95_ms": Figure("lower", 1.0),
    "p99_ms": Figure("lower", 2.0),
    "success_rate": Figure("higher", 0.5, relative=False),
    "pickup_p50_ms": Figure("lower", 1.0),
    "pickup_p95_ms": Figure("lower", 1.0),
    "achieved_rate": Figure("higher", 0.0),
    "recovery_s": Figure("lower", 1.0),
    "lost_tasks": Figure("lower", 0.0),
    "double_outcomes": Figure("lower", 0.0),
    "rss_growth_mb": Figure("lower", 2.0),
}


@dataclass
class Result:
    """One row of the summary: a benchmark's size, time, rate, latency and success."""

    name: str
    tasks: int
    duration_s: float
    throughput: float | None
    latencies_ms: list[float]
    success_rate: float
    latency_of: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def percentile(self, p: float) -> float | None:
        return percentile(self.latencies_ms, p)

    def figures(self) -> dict[str, float | None]:
        """Every comparable figure by name (see FIGURES)."""
        return {
            "throughput": self.throughput,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "success_rate": self.success_rate,
            **self.extra,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": self.tasks,
            "duration_s": round(self.duration_s, 4),
            "latency_of": self.latency_of,
            **{k: _rounded(v) for k, v in self.figures().items()},
        }


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# ------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How big each benchmark is, in quick or full mode."""

    mode: str
    spawn_single: int
    spawn_batch: int
    claim: int
    claim_batch: int
    stats_calls: int
    table_rows: int
    latency_tasks: int
    concurrent_tasks: int
    many_workers: int
    many_worker_tasks: int
    sustain_rate: float
    sustain_s: float
    crash_tasks: int


QUICK = Plan(
    mode="quick", spawn_single=500, spawn_batch=50_000, claim=500, claim_batch=5_000,
    stats_calls=200, table_rows=20_000, latency_tasks=200, concurrent_tasks=5_000,
    many_workers=0, many_worker_tasks=0, sustain_rate=50.0, sustain_s=5.0,
    crash_tasks=64,
)
FULL = Plan(
    mode="full", spawn_single=5_000, spawn_batch=500_000, claim=5_000,
    claim_batch=50_000, stats_calls=1_000, table_rows=1_000_000, latency_tasks=1_000,
    concurrent_tasks=100_000, many_workers=50, many_worker_tasks=20_000,
    sustain_rate=200.0, sustain_s=30.0, crash_tasks=200,
)

#: Benchmarks in the order they run; --only takes these names.
CLIENT_BENCHMARKS = ("spawn", "claim", "complete", "stats")
WORKER_BENCHMARKS = ("latency", "concurrent", "burst", "sustained", "crash")
BENCHMARKS = CLIENT_BENCHMARKS + WORKER_BENCHMARKS


def build_parser() -> argparse.ArgumentParser:
    parser = config.parser(
        "Measure the absurd queue end to end (spawn, claim, complete, latency, worker "
        "processes, crash recovery) and compare against a known-good run.",
    )
    parser.epilog = "exit codes: " + "; ".join(
        f"{code} {meaning}" for code, meaning in EXIT_CODES.items()
    )
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: the whole run in under a minute")
    parser.add_argument("--only", type=benchmark_names, default=list(BENCHMARKS),
                        help="comma-separated subset of: " + ",".join(BENCHMARKS))
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write every figure and the environment to PATH")
    parser.add_argument("--compare", type=Path, metavar="BASELINE.json",
                        help="compare against a --json file of a known-good run")
    parser.add_argument("--tolerance", type=config.positive_float, default=0.25,
                        help="fraction a figure may be worse than the baseline's")
    parser.add_argument("--targets", action="store_true",
                        help="check the production targets; exit non-zero on a miss")
    parser.add_argument("--target-throughput", type=config.positive_float,
                        default=15.0, help="tasks/s the worker fleet must exceed")
    parser.add_argument("--target-p95-ms", type=config.positive_float, default=200.0,
                        help="p95 task latency (ms) to stay under")
    parser.add_argument("--target-success", type=config.positive_float, default=99.0,
                        help="success rate (percent) to exceed")
    parser.add_argument("--workers", type=config.positive_int, default=4,
                        help="worker processes of the concurrent benchmarks")
    parser.add_argument("--concurrency", type=config.positive_int, default=4,
                        help="tasks each worker process runs at once")
    parser.add_argument("--many-workers", type=int, default=None, metavar="N",
                        help="worker processes of the many-workers row (0: skip; "
                        "default 50 in full mode, 0 in quick mode)")
    parser.add_argument("--tasks", type=config.positive_int, default=None,
                        help="tasks of the concurrent benchmark (default by mode)")
    parser.add_argument("--table-rows", type=int, default=None, metavar="N",
                        help="finished tasks of history before the statistics "
                        "benchmark (default 1,000,000; 20,000 in quick mode)")
    parser.add_argument("--sustain", type=config.positive_float, default=None,
                        metavar="RATE", help="tasks/s offered by the sustained load")
    parser.add_argument("--duration", type=config.positive_float, default=None,
                        metavar="S", help="seconds of sustained load")
    parser.add_argument("--batch-size", type=config.positive_int, default=1_000,
                        help="tasks per spawn_many() call of the batch spawn")
    parser.add_argument("--worker-log-level", default="WARNING", type=str.upper,
                        choices=config.LOG_LEVELS,
                        help="log level of the benchmark's workers (INFO logs a line "
                        "per task, which then dominates what is measured)")
    parser.add_argument("--worker-script", type=Path,
                        default=REPO / "scripts" / "run_absurd_worker.py",
                        help="the worker program the benchmark starts")
    return parser


def benchmark_names(text: str) -> list[str]:
    """argparse type: a comma-separated subset of BENCHMARKS, kept in run order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown) or '(none)'}: use a "
            f"comma-separated subset of {','.join(BENCHMARKS)}"
        )
    return [name for name in BENCHMARKS if name in names]


def make_plan(args: argparse.Namespace) -> Plan:
    """The mode's sizes with the flags that override them."""
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.table_rows is not None:
        if args.table_rows < 0:
            raise ConfigError(f"invalid --table-rows {args.table_rows}: use 0 or more")
        overrides["table_rows"] = args.table_rows
    if args.many_workers is not None:
        if args.many_workers < 0:
            raise ConfigError(f"invalid --many-workers {args.many_workers}: use 0+")
        overrides["many_workers"] = args.many_workers
        overrides["many_worker_tasks"] = plan.many_worker_tasks or 2_000
    if args.tasks is not None:
        overrides["concurrent_tasks"] = args.tasks
    if args.sustain is not None:
        overrides["sustain_rate"] = args.sustain
    if args.duration is not None:
        overrides["sustain_s"] = args.duration
    return Plan(**{**plan.__dict__, **overrides})


def queue_from_command_line(argv: Sequence[str]) -> bool:
    """Whether --queue was given on the command line (not taken from absurd.conf)."""
    return any(arg == "--queue" or arg.startswith("--queue=") for arg in argv)


# ------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def rule(char: str = "=") -> None:
    say(char * WIDTH)


def print_header(dsn: str, queue: str, plan: Plan, env: dict[str, Any],
                 workers: str) -> None:
    rule()
    say("ABSURD PERFORMANCE BENCHMARK")
    rule()
    say(f"Database: {redact(dsn)}")
    say(f"Server: {env['postgresql'].split(',')[0]}, synchronous_commit="
        f"{env['settings']['synchronous_commit']}, {env['cpu_count']} cores")
    say(f"Queue: {queue}")
    say(f"Mode: {plan.mode}")
    say(f"Workers: {workers}")
    say("Clocks: e2e latency = task finished_at - created_at (database clock); "
        "pickup =")
    say("  handler start - spawn sent (this host's clock); call latencies = this "
        "host's")
    say("  monotonic clock around one round trip.")
    rule()
    say()


def fmt_figure(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}ms"


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def summary_line(result: Result) -> str:
    parts = [f"{result.tasks:,} tasks in {result.duration_s:.2f}s"]
    if result.throughput is not None:
        parts.append(f"{result.throughput:,.1f} tasks/s")
    if result.latencies_ms:
        parts.append(f"p50 {fmt_ms(result.percentile(50))}, "
                     f"p95 {fmt_ms(result.percentile(95))}, "
                     f"p99 {fmt_ms(result.percentile(99))}")
    parts.append(f"success {result.success_rate:.1f}%")
    parts += [f"{key} {fmt_figure(value)}" for key, value in result.extra.items()]
    return "  done: " + ", ".join(parts)


def print_summary(results: Sequence[Result]) -> None:
    say()
    rule()
    say("BENCHMARK SUMMARY")
    rule()
    rows = [
        [r.name, f"{r.tasks:,}", f"{r.duration_s:.2f}s", fmt_rate(r.throughput),
         fmt_ms(r.percentile(50)), fmt_ms(r.percentile(95)), fmt_ms(r.percentile(99)),
         f"{r.success_rate:.1f}%"]
        for r in results
    ]
    headers = ["Benchmark", "Tasks", "Duration", "Throughput\n(tasks/s)", "P50", "P95",
               "P99", "Success\nRate"]
    say(tabulate(rows, headers=headers, tablefmt="fancy_grid", disable_numparse=True))
    notes = [f"  {r.name}: latency of {r.latency_of}" for r in results if r.latency_of]
    extras = [
        f"  {r.name}: " + ", ".join(f"{k} {fmt_figure(v)}" for k, v in r.extra.items())
        for r in results if r.extra
    ]
    if notes:
        say("Latency columns measure:")
        say("\n".join(notes))
    if extras:
        say("Other figures:")
        say("\n".join(extras))


# ------------------------------------------------------------------------------------
# Environment and the benchmark queue
# ------------------------------------------------------------------------------------


def git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(conn: psycopg.Connection) -> dict[str, Any]:
    """What the figures depend on: the server, its settings and this machine."""
    settings = {
        name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
        for name in RECORDED_SETTINGS
    }
    return {
        "postgresql": conn.execute("SELECT version()").fetchone()[0],
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
    }


def refuse_used_queue(client: Client) -> None:
    """Refuse a queue that holds anything: it is emptied at the end."""
    tasks, workers, counts = client.conn.execute(
        "SELECT (SELECT count(*) FROM absurd.tasks WHERE queue = %(q)s),"
        " (SELECT count(*) FROM absurd.workers WHERE queue = %(q)s),"
        " (SELECT count(*) FROM absurd.queue_counts WHERE queue = %(q)s)",
        {"q": client.queue},
    ).fetchone()
    if tasks or workers or counts:
        raise ConfigError(
            f"queue {client.queue} is in use ({tasks} tasks, {workers} workers): the "
            "benchmark deletes everything in its queue at the end; leave --queue unset "
            "or name an unused queue"
        )


#: Deleted tasks after which the tables are vacuumed before the next benchmark.
VACUUM_AFTER_ROWS = 10_000


def clear_tasks(client: Client) -> None:
    """Delete the tasks, runs and counters of the benchmark queue (between runs).

    After a large delete the tables are vacuumed, as autovacuum would do a little
    later, so that one benchmark's dead rows do not slow down the next.
    """
    with client.conn.transaction():
        deleted = client.conn.execute("DELETE FROM absurd.tasks WHERE queue = %s",
                                      (client.queue,)).rowcount
        client.conn.execute("DELETE FROM absurd.queue_counts WHERE queue = %s",
                            (client.queue,))
    if deleted >= VACUUM_AFTER_ROWS:
        client.conn.execute("VACUUM absurd.tasks, absurd.runs, absurd.queue_counts")


def clear_queue(client: Client) -> None:
    """Delete every row of the benchmark queue: tasks, runs, counters and workers."""
    clear_tasks(client)
    client.conn.execute("DELETE FROM absurd.workers WHERE queue = %s",
                        (client.queue,))


def fill_queue(client: Client, count: int, task_name: str = NOOP,
               params: dict[str, Any] | None = None, **options: Any) -> list[int]:
    """Spawn count tasks in large batches; return their ids."""
    ids: list[int] = []
    while len(ids) < count:
        size = min(FILL_BATCH, count - len(ids))
        specs = [TaskSpec(task_name, params or {}, **options) for _ in range(size)]
        ids += [s.task_id for s in client.spawn_many(specs)]
    return ids


def terminal_count(client: Client) -> int:
    """Finished tasks of the queue, from the counters (cheap at any size)."""
    return client.conn.execute(
        "SELECT coalesce(sum(n), 0)::bigint FROM absurd.queue_counts WHERE queue = %s",
        (client.queue,),
    ).fetchone()[0]


def state_counts(client: Client) -> dict[str, int]:
    rows = client.conn.execute(
        "SELECT state, count(*) FROM absurd.tasks WHERE queue = %s GROUP BY state",
        (client.queue,),
    ).fetchall()
    return dict(rows)


# ------------------------------------------------------------------------------------
# Client-level benchmarks: one connection, one round trip per call
# ------------------------------------------------------------------------------------


def timed_calls(count: int, call: Callable[[int], int]
                ) -> tuple[float, list[float], int]:
    """Call call(done) until count tasks are handled: (seconds, ms per call, done).

    call returns how many tasks it handled; a call handling none ends the loop.
    """
    latencies: list[float] = []
    done = 0
    started = time.perf_counter()
    while done < count:
        before = time.perf_counter()
        handled = call(done)
        latencies.append((time.perf_counter() - before) * 1000)
        if handled == 0:
            break
        done += handled
    return time.perf_counter() - started, latencies, done


def bench_spawn_single(client: Client, count: int) -> Result:
    seconds, latencies, done = timed_calls(
        count, lambda _: len([client.spawn(NOOP)])
    )
    return Result("spawn_single", done, seconds, rate(done, seconds), latencies,
                  100.0 * done / count, "one spawn() call: one task, one commit")


def bench_spawn_batch(client: Client, count: int, batch: int) -> Result:
    def spawn_batch(done: int) -> int:
        size = min(batch, count - done)
        return len(client.spawn_many([TaskSpec(NOOP) for _ in range(size)]))

    seconds, latencies, done = timed_calls(count, spawn_batch)
    return Result("spawn_batch", done, seconds, rate(done, seconds), latencies,
                  100.0 * done / count, f"one spawn_many() call of {batch} tasks")


def bench_claim(client: Client, count: int, per_call: int, name: str
                ) -> tuple[Result, list[int]]:
    """Claim count pending tasks, per_call at a time; return the result and run ids."""
    worker_id = uuid.uuid4()
    run_ids: list[int] = []

    def claim(done: int) -> int:
        claimed = client.claim(worker_id, min(per_call, count - done), CLIENT_LEASE_S)
        run_ids.extend(c.run_id for c in claimed)
        return len(claimed)

    seconds, latencies, done = timed_calls(count, claim)
    result = Result(name, done, seconds, rate(done, seconds), latencies,
                    100.0 * done / count, f"one claim() call, limit {per_call}")
    return result, run_ids


def bench_complete(client: Client, run_ids: list[int], per_call: int, name: str
                   ) -> Result:
    completed = 0

    def complete(done: int) -> int:
        nonlocal completed
        chunk = run_ids[done:done + per_call]
        statuses = client.complete_many([(run_id, None) for run_id in chunk])
        completed += statuses.count("completed")
        return len(chunk)

    seconds, latencies, done = timed_calls(len(run_ids), complete)
    return Result(name, done, seconds, rate(done, seconds), latencies,
                  100.0 * completed / max(1, len(run_ids)),
                  f"one complete_many() call, {per_call} run(s)")


# Finished tasks written straight into the tables, as months of operation leave them:
# 1% failed, 0.4% cancelled, the rest completed, one run each, finishing over the
# past day. Running a million tasks through the queue would take minutes.
HISTORY_SQL = """
WITH history AS (
    INSERT INTO absurd.tasks AS t (
        queue, task_name, params, state, available_at, max_attempts, attempts,
        backoff_base_s, backoff_max_s, result, error, created_at, updated_at,
        finished_at)
    SELECT %(queue)s, %(task_name)s, jsonb_build_object('n', g),
           CASE WHEN g %% 100 = 0 THEN 'failed' WHEN g %% 250 = 1 THEN 'cancelled'
                ELSE 'completed' END,
           f - interval '50 ms', 5, 1, 1, 3600,
           CASE WHEN g %% 100 = 0 OR g %% 250 = 1 THEN NULL
                ELSE '{"ok": true}'::jsonb END,
           CASE WHEN g %% 100 = 0
                THEN '{"type": "Error", "message": "history"}'::jsonb END,
           f - interval '50 ms', f, f
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
         LATERAL (SELECT now() - g * %(spacing)s::float8 * interval '1 ms' AS f) AS ts
    RETURNING t.task_id, t.state, t.finished_at
)
INSERT INTO absurd.runs (task_id, attempt, worker_id, state, claimed_at,
                         lease_expires_at, finished_at)
SELECT task_id, 1, %(worker)s, state, finished_at - interval '40 ms',
       finished_at + interval '1 minute', finished_at
FROM history
"""


def prefill_history(client: Client, rows: int) -> None:
    """Write rows finished tasks of history into the queue, with their counters."""
    spacing_ms = 86_400_000 / max(rows, 1)
    worker = uuid.uuid4()
    chunk = 100_000
    for first in range(1, rows + 1, chunk):
        last = min(rows, first + chunk - 1)
        with client.conn.transaction():
            client.conn.execute(HISTORY_SQL, {
                "queue": client.queue, "task_name": NOOP, "first": first,
                "last": last, "spacing": spacing_ms, "worker": worker,
            })
        if rows > chunk:
            say(f"  history: {last:,}/{rows:,} finished tasks written")
    client.conn.execute(
        "SELECT absurd.count_terminal(%(q)s, state, count(*)) FROM absurd.tasks"
        " WHERE queue = %(q)s AND state IN ('completed', 'failed', 'cancelled')"
        " GROUP BY state",
        {"q": client.queue},
    )
    client.conn.execute("ANALYZE absurd.tasks")
    client.conn.execute("ANALYZE absurd.runs")


def bench_stats(client: Client, calls: int, history_rows: int) -> Result:
    prefill_history(client, history_rows)
    fill_queue(client, 100)  # a small live backlog next to the history
    client.stats()  # warm the plan cache, as a monitor's first call does

    seconds, latencies, done = timed_calls(calls, lambda _: bool(client.stats()))
    return Result("queue_stats", done, seconds, rate(done, seconds), latencies,
                  100.0 * done / calls, "one stats() call",
                  {"history_rows": history_rows})


# ------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------

#: The registry the benchmark's workers load: its task names, in-process handlers.
TASKS_CONFIG = f"""
[DEFAULT]
mode = thread

[{NOOP}]
handler = absurd.benchmark_tasks:noop

[{STAMP}]
handler = absurd.benchmark_tasks:stamp

[{SLEEP}]
handler = absurd.benchmark_tasks:sleep
"""
#: Seconds a worker fleet gets to register; Python start-up on a busy host is slow.
FLEET_START_TIMEOUT_S = 120.0
#: Seconds a worker gets to drain and exit after SIGTERM before it is killed.
FLEET_STOP_TIMEOUT_S = 15.0
#: Lease of the crash-recovery fleet: short, so that killed runs come back soon.
CRASH_LEASE_S = 2.0
#: Seconds each task of the crash-recovery benchmark sleeps in its handler.
CRASH_TASK_S = 0.2
#: Seconds the tasks of a benchmark get to finish before the rest count as lost.
SETTLE_TIMEOUT_S = 120.0
#: Seconds between progress lines while a benchmark waits for its tasks.
PROGRESS_EVERY_S = 3.0


class WorkerFailed(AbsurdError):
    """A worker process of the benchmark exited on its own: see its log."""


@dataclass
class Fleet:
    """Worker processes this benchmark started, known by their PIDs."""

    script: Path
    dsn: str
    queue: str
    workdir: Path
    log_level: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, count: int, concurrency: int, lease_s: float = 30.0) -> None:
        """Start count workers and wait until every one has registered."""
        registry = self.workdir / "benchmark-tasks.conf"
        registry.write_text(TASKS_CONFIG)
        # The DSN travels in the environment: a command line is visible to every user.
        env = {**os.environ, "ABSURD_DSN": self.dsn}
        first = len(self.processes)
        for number in range(first, first + count):
            log_file = open(self.workdir / f"worker-{number}.log", "wb")
            self.processes.append(subprocess.Popen(
                [sys.executable, str(self.script), "--queue", self.queue,
                 "--concurrency", str(concurrency), "--lease", f"{lease_s:g}",
                 "--tasks-config", str(registry), "--log-level", self.log_level],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            ))
            log_file.close()
        self._wait_registered(len(self.processes))

    def _wait_registered(self, expected: int) -> None:
        pids = [p.pid for p in self.processes]
        deadline = time.monotonic() + FLEET_START_TIMEOUT_S
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                self.check_alive()
                live = conn.execute(
                    "SELECT count(*) FROM absurd.workers WHERE queue = %s"
                    " AND stopped_at IS NULL AND pid = ANY (%s)", (self.queue, pids),
                ).fetchone()[0]
                if live >= expected:
                    return
                time.sleep(0.05)
        raise WorkerFailed(f"{expected} workers did not register within "
                           f"{FLEET_START_TIMEOUT_S:g}s; is the database overloaded?")

    def check_alive(self) -> None:
        """Raise WorkerFailed when a worker exited on its own, showing its log tail."""
        for number, process in enumerate(self.processes):
            if process.poll() is not None:
                tail = (self.workdir / f"worker-{number}.log").read_text(
                    errors="replace").splitlines()[-5:]
                raise WorkerFailed(
                    f"worker pid={process.pid} exited with {process.returncode}: "
                    + " | ".join(tail)
                )

    def rss_mb(self) -> list[float]:
        """Resident memory of each worker with its child processes, in MB."""
        sizes = []
        for process in self.processes:
            try:
                parent = psutil.Process(process.pid)
                tree = [parent, *parent.children(recursive=True)]
                sizes.append(sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.NoSuchProcess:
                sizes.append(0.0)
        return sizes

    def kill(self) -> None:
        """SIGKILL every worker, as a crash would, and reap them."""
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes.clear()

    def stop(self) -> None:
        """SIGTERM every worker (drain, release, exit); SIGKILL any that hangs."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + FLEET_STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def wait_terminal(client: Client, fleet: Fleet, expected: int, label: str,
                  timeout_s: float = SETTLE_TIMEOUT_S) -> int:
    """Wait until expected tasks of the queue are finished; return how many are."""
    deadline = time.monotonic() + timeout_s
    next_report = time.monotonic() + PROGRESS_EVERY_S
    finished = terminal_count(client)
    while finished < expected and time.monotonic() < deadline:
        fleet.check_alive()
        time.sleep(0.02)
        finished = terminal_count(client)
        if time.monotonic() >= next_report:
            say(f"  ... {label}: {finished:,}/{expected:,} tasks finished")
            next_report += PROGRESS_EVERY_S
    return finished


@dataclass(frozen=True)
class Settled:
    """What the database says about a benchmark's tasks once they are finished."""

    completed: int
    latencies_ms: list[float]
    span_s: float


def settled(client: Client) -> Settled:
    """Completed tasks, their spawn -> completed latencies and the span, on the
    database clock."""
    rows = client.conn.execute(
        "SELECT extract(epoch FROM finished_at - created_at) * 1000 FROM absurd.tasks"
        " WHERE queue = %s AND state = 'completed'", (client.queue,),
    ).fetchall()
    span = client.conn.execute(
        "SELECT coalesce(extract(epoch FROM max(finished_at) - min(created_at)), 0)"
        " FROM absurd.tasks WHERE queue = %s", (client.queue,),
    ).fetchone()[0]
    return Settled(len(rows), [float(ms) for (ms,) in rows], float(span))


def bench_e2e_latency(client: Client, fleet: Fleet, count: int) -> Result:
    """One task at a time at light load: spawn, handler start, completed."""
    warmup = 10
    pickups: list[float] = []
    for number in range(warmup + count):
        sent = time.time()
        task_id = client.spawn(STAMP).task_id
        row = wait_task(client, fleet, task_id)
        if number >= warmup and row is not None and row[0] == "completed":
            pickups.append((row[1]["handler_started"] - sent) * 1000)
        time.sleep(0.005)  # let the workers go back to waiting
        if number == warmup - 1:
            clear_tasks(client)
    done = settled(client)
    result = Result("e2e_latency", count, done.span_s, None, done.latencies_ms,
                    100.0 * done.completed / count,
                    "spawn -> completed, one task at a time (database clock)")
    result.extra["pickup_p50_ms"] = round(percentile(pickups, 50) or 0.0, 3)
    result.extra["pickup_p95_ms"] = round(percentile(pickups, 95) or 0.0, 3)
    return result


def wait_task(client: Client, fleet: Fleet, task_id: int,
              timeout_s: float = 30.0) -> tuple[str, Any] | None:
    """Poll one task until it is finished; its state and result, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = client.conn.execute(
            "SELECT state, result FROM absurd.tasks WHERE task_id = %s", (task_id,),
        ).fetchone()
        if row[0] in TERMINAL_STATES:
            return row[0], row[1]
        time.sleep(0.001)
    fleet.check_alive()
    return None


def bench_concurrent(client: Client, fleet: Fleet, count: int, name: str
                     ) -> Result:
    """Spawn count no-op tasks as fast as possible while the fleet drains them."""
    rss_before = fleet.rss_mb()
    fill_queue(client, count)
    finished = wait_terminal(client, fleet, count, name)
    rss_after = fleet.rss_mb()

    done = settled(client)
    result = Result(name, count, done.span_s, rate(done.completed, done.span_s),
                    done.latencies_ms, 100.0 * done.completed / count,
                    f"spawn -> completed under a backlog of {count:,} (database clock)")
    result.extra["lost_tasks"] = count - finished
    result.extra["rss_growth_mb"] = round(max(
        after - before for before, after in zip(rss_before, rss_after)), 2)
    return result


def bench_burst(client: Client, fleet: Fleet, count: int = 100,
                window_s: float = 2.0) -> Result:
    """count tasks spawned at random moments within window_s, one call each."""
    offsets = sorted(secrets.SystemRandom().uniform(0, window_s) for _ in range(count))
    started = time.monotonic()
    for offset in offsets:
        time.sleep(max(0.0, started + offset - time.monotonic()))
        client.spawn(NOOP)
    finished = wait_terminal(client, fleet, count, "burst")

    done = settled(client)
    result = Result("burst", count, done.span_s, rate(done.completed, done.span_s),
                    done.latencies_ms, 100.0 * done.completed / count,
                    f"spawn -> completed, {count} tasks within {window_s:g}s "
                    "(database clock)")
    result.extra["lost_tasks"] = count - finished
    return result


def bench_sustained(client: Client, fleet: Fleet, offered_rate: float,
                    seconds: float) -> Result:
    """Spawn at offered_rate tasks/s for seconds, in 10 ms ticks."""
    total = max(1, round(offered_rate * seconds))
    spawned = 0
    started = time.monotonic()
    next_report = started + PROGRESS_EVERY_S
    while spawned < total:
        due = min(total, math.floor((time.monotonic() - started) * offered_rate) + 1)
        if due > spawned:
            client.spawn_many([TaskSpec(NOOP) for _ in range(due - spawned)])
            spawned = due
        if time.monotonic() >= next_report:
            say(f"  ... sustained: {spawned:,}/{total:,} tasks spawned")
            next_report += PROGRESS_EVERY_S
        time.sleep(0.01)
    spawn_seconds = time.monotonic() - started
    finished = wait_terminal(client, fleet, total, "sustained")

    done = settled(client)
    result = Result("sustained", total, done.span_s, rate(done.completed, done.span_s),
                    done.latencies_ms, 100.0 * done.completed / total,
                    f"spawn -> completed at {offered_rate:g} tasks/s offered "
                    "(database clock)")
    result.extra["achieved_rate"] = round(rate(done.completed, done.span_s), 2)
    result.extra["offered_rate"] = round(rate(total, spawn_seconds), 2)
    result.extra["lost_tasks"] = total - finished
    return result


def bench_crash(client: Client, fleet: Fleet, workers: int, concurrency: int,
                count: int) -> Result:
    """SIGKILL the fleet mid-run, start a new one, and check nothing is lost or
    finished twice."""
    fleet.start(workers, concurrency, lease_s=CRASH_LEASE_S)
    fill_queue(client, count, SLEEP, {"seconds": CRASH_TASK_S}, backoff_base_s=0.1,
               backoff_max_s=1.0)
    while terminal_count(client) < count // 3:
        fleet.check_alive()
        time.sleep(0.01)
    running = state_counts(client).get("running", 0)
    fleet.kill()
    killed_at = time.monotonic()
    say(f"  killed {workers} workers with {running} tasks running; starting "
        f"{workers} new ones")

    fleet.start(workers, concurrency, lease_s=CRASH_LEASE_S)
    finished = wait_terminal(client, fleet, count, "crash recovery")
    recovery_s = time.monotonic() - killed_at
    fleet.stop()

    done = settled(client)
    double = client.conn.execute(
        "SELECT count(*) FROM (SELECT r.task_id FROM absurd.runs r"
        " JOIN absurd.tasks t ON t.task_id = r.task_id"
        " WHERE t.queue = %s AND r.state = 'completed'"
        " GROUP BY r.task_id HAVING count(*) > 1) AS twice", (client.queue,),
    ).fetchone()[0]
    rerun = client.conn.execute(
        "SELECT count(*) FROM absurd.tasks WHERE queue = %s AND attempts > 1",
        (client.queue,),
    ).fetchone()[0]
    result = Result("crash_recovery", count, done.span_s,
                    rate(done.completed, done.span_s), done.latencies_ms,
                    100.0 * done.completed / count,
                    "spawn -> completed across the crash (database clock)")
    result.extra.update({
        "recovery_s": round(recovery_s, 3), "killed_running": running,
        "rerun_tasks": rerun, "lost_tasks": count - finished,
        "double_outcomes": double,
    })
    return result


# ------------------------------------------------------------------------------------
# Baselines and targets
# ------------------------------------------------------------------------------------


def results_document(results: Sequence[Result], env: dict[str, Any], dsn: str,
                     queue: str, plan: Plan, args: argparse.Namespace
                     ) -> dict[str, Any]:
    return {
        "format": RESULTS_FORMAT,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": plan.mode,
        "database": redact(dsn),
        "queue": queue,
        "plan": plan.__dict__,
        "workers": {"processes": args.workers, "concurrency": args.concurrency},
        "environment": env,
        "results": [r.as_json() for r in results],
    }


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the baseline {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the baseline {path} is not JSON ({exc}); give a file "
                          "written by --json") from None
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        raise ConfigError(f"the baseline {path} is not a results file of format "
                          f"{RESULTS_FORMAT}; give a file written by --json")
    return document


def regressions(results: Sequence[Result], baseline: dict[str, Any],
                tolerance: float) -> list[str]:
    """Every figure worse than the baseline's by more than tolerance, described."""
    found = []
    previous = {row["name"]: row for row in baseline["results"]}
    for result in results:
        before = previous.get(result.name)
        if before is None:
            continue
        for name, now in result.figures().items():
            was = before.get(name)
            if now is None or was is None or name not in FIGURES:
                continue
            if is_regression(FIGURES[name], was, now, tolerance):
                found.append(f"{result.name} {name}: {now:g} (baseline {was:g})")
    return found


def is_regression(figure: Figure, was: float, now: float, tolerance: float) -> bool:
    worse_by = now - was if figure.better == "lower" else was - now
    if worse_by <= figure.slack:
        return False
    if not figure.relative:
        return True
    return worse_by > tolerance * abs(was)


@dataclass(frozen=True)
class Targets:
    """The production targets: fleet throughput, task latency p95, success rate."""

    throughput: float
    p95_ms: float
    success: float


#: Rows whose throughput is the worker fleet's; rows whose latency is a task's.
THROUGHPUT_ROWS = ("concurrent", "sustained")
TASK_LATENCY_ROWS = ("e2e_latency", "burst", "sustained")


def missed_targets(results: Sequence[Result], targets: Targets) -> list[str]:
    missed = []
    for result in results:
        family = result.name.split("_")[0]
        if family in THROUGHPUT_ROWS and (result.throughput or 0) <= targets.throughput:
            missed.append(f"{result.name} throughput {fmt_rate(result.throughput)} "
                          f"tasks/s is not above {targets.throughput:g}")
        p95 = result.percentile(95)
        if result.name in TASK_LATENCY_ROWS and p95 is not None \
                and p95 >= targets.p95_ms:
            missed.append(f"{result.name} p95 {fmt_ms(p95)} is not under "
                          f"{targets.p95_ms:g} ms")
        if result.success_rate <= targets.success:
            missed.append(f"{result.name} success {result.success_rate:.1f}% is not "
                          f"above {targets.success:g}%")
    return missed


def failures(results: Sequence[Result]) -> list[str]:
    """Broken guarantees: tasks lost or finished twice; these fail any run."""
    found = []
    for result in results:
        for name in ("lost_tasks", "double_outcomes"):
            if result.extra.get(name):
                found.append(f"{result.name}: {name} = {result.extra[name]:g}")
    return found


# ------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------


def announce(text: str) -> None:
    say(f"{text}...")


def run_client_benchmarks(client: Client, plan: Plan, only: Sequence[str],
                          batch_size: int) -> list[Result]:
    results: list[Result] = []

    def record(result: Result) -> None:
        say(summary_line(result))
        results.append(result)
        clear_tasks(client)

    if "spawn" in only:
        announce(f"spawn_single: spawning {plan.spawn_single:,} tasks, one per call")
        record(bench_spawn_single(client, plan.spawn_single))
        announce(f"spawn_batch: spawning {plan.spawn_batch:,} tasks, "
                 f"{batch_size:,} per call")
        record(bench_spawn_batch(client, plan.spawn_batch, batch_size))

    if "claim" in only or "complete" in only:
        for count, per_call, suffix in ((plan.claim, 1, "single"),
                                        (plan.claim_batch, RUN_BATCH, "batch")):
            fill_queue(client, count)
            announce(f"claim_{suffix}: claiming {count:,} tasks, {per_call} per call")
            claimed, run_ids = bench_claim(client, count, per_call, f"claim_{suffix}")
            if "claim" in only:
                say(summary_line(claimed))
                results.append(claimed)
            if "complete" in only:
                announce(f"complete_{suffix}: completing {len(run_ids):,} runs, "
                         f"{per_call} per call")
                record(bench_complete(client, run_ids, per_call,
                                      f"complete_{suffix}"))
            clear_tasks(client)

    if "stats" in only:
        announce(f"queue_stats: {plan.stats_calls:,} stats() calls over "
                 f"{plan.table_rows:,} finished tasks of history")
        record(bench_stats(client, plan.stats_calls, plan.table_rows))
    return results


def free_connection_pairs(client: Client) -> int:
    """How many more workers (two connections each) the server can take now."""
    limit, reserved, in_use = client.conn.execute(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    ).fetchone()
    return max(0, (limit - reserved - in_use - 2) // 2)


def run_worker_benchmarks(client: Client, plan: Plan, args: argparse.Namespace,
                          dsn: str, workdir: Path) -> list[Result]:
    results: list[Result] = []
    only = args.only

    def record(result: Result) -> None:
        say(summary_line(result))
        results.append(result)
        clear_tasks(client)

    fleet = Fleet(args.worker_script, dsn, client.queue, workdir,
                  args.worker_log_level)
    try:
        if {"latency", "concurrent", "burst", "sustained"} & set(only):
            announce(f"starting {args.workers} workers x concurrency "
                     f"{args.concurrency}")
            fleet.start(args.workers, args.concurrency)
            if "latency" in only:
                announce(f"e2e_latency: {plan.latency_tasks:,} tasks, one at a time")
                record(bench_e2e_latency(client, fleet, plan.latency_tasks))
            if "concurrent" in only:
                name = f"concurrent_{args.workers}x{args.concurrency}"
                announce(f"{name}: {plan.concurrent_tasks:,} no-op tasks spawned as "
                         "fast as possible")
                record(bench_concurrent(client, fleet, plan.concurrent_tasks, name))
            if "burst" in only:
                announce("burst: 100 tasks spawned within 2 s")
                record(bench_burst(client, fleet))
            if "sustained" in only:
                announce(f"sustained: {plan.sustain_rate:g} tasks/s for "
                         f"{plan.sustain_s:g}s")
                record(bench_sustained(client, fleet, plan.sustain_rate,
                                       plan.sustain_s))
            fleet.stop()

        if "concurrent" in only and plan.many_workers:
            many = min(plan.many_workers, free_connection_pairs(client))
            if many < plan.many_workers:
                say(f"  note: the server takes {many} more workers, not "
                    f"{plan.many_workers} (max_connections)")
            name = f"concurrent_{many}x1"
            announce(f"{name}: starting {many} workers x concurrency 1, "
                     f"{plan.many_worker_tasks:,} no-op tasks")
            fleet.start(many, 1)
            record(bench_concurrent(client, fleet, plan.many_worker_tasks, name))
            fleet.stop()

        if "crash" in only:
            announce(f"crash_recovery: {plan.crash_tasks} tasks of "
                     f"{CRASH_TASK_S:g}s, {args.workers} workers SIGKILLed mid-run, "
                     f"lease {CRASH_LEASE_S:g}s")
            record(bench_crash(client, fleet, args.workers, args.concurrency,
                               plan.crash_tasks))
    finally:
        fleet.stop()
    return results


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    plan = make_plan(args)
    if set(args.only) & set(WORKER_BENCHMARKS) and not args.worker_script.is_file():
        raise ConfigError(f"the worker program {args.worker_script} does not exist; "
                          "point --worker-script at run_absurd_worker.py")
    if args.compare:
        baseline = load_baseline(args.compare)
    queue = args.queue if queue_from_command_line(argv) else (
        f"benchmark-{secrets.token_hex(4)}")
    dsn = schema.ready_dsn(args.dsn, args.state_dir)

    with Client.connect(dsn, queue, application_name="absurd-benchmark") as client:
        refuse_used_queue(client)
        env = environment(client.conn)
        print_header(dsn, queue, plan, env, f"{args.workers} processes x concurrency "
                     f"{args.concurrency}, log level {args.worker_log_level}")
        results: list[Result] = []
        try:
            results += run_client_benchmarks(client, plan, args.only, args.batch_size)
            with tempfile.TemporaryDirectory(prefix="absurd-benchmark-") as workdir:
                results += run_worker_benchmarks(client, plan, args, dsn,
                                                 Path(workdir))
        finally:
            clear_queue(client)

    print_summary(results)
    return judge(results, env, dsn, queue, plan, args,
                 baseline if args.compare else None)


def judge(results: Sequence[Result], env: dict[str, Any], dsn: str, queue: str,
          plan: Plan, args: argparse.Namespace, baseline: dict[str, Any] | None
          ) -> int:
    """Write the JSON, list failures, regressions and missed targets; the exit code."""
    if args.json:
        document = results_document(results, env, dsn, queue, plan, args)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        say(f"\nResults saved to: {args.json}")

    broken = failures(results)
    regressed = regressions(results, baseline, args.tolerance) if baseline else []
    missed = missed_targets(results, Targets(
        args.target_throughput, args.target_p95_ms, args.target_success,
    )) if args.targets else []

    if baseline is not None:
        if baseline.get("mode") != plan.mode:
            say(f"\nNote: the baseline is a {baseline.get('mode')} run, this one "
                f"{plan.mode}: sizes differ, so figures may too.")
        say(f"\nCompared with {args.compare} (tolerance {args.tolerance:.0%}): "
            + (f"{len(regressed)} regression(s)" if regressed else "no regression"))
        for line in regressed:
            say(f"  REGRESSION {line}")
    if args.targets:
        say("\nProduction targets: throughput > "
            f"{args.target_throughput:g} tasks/s, p95 < {args.target_p95_ms:g} ms, "
            f"success > {args.target_success:g}%: "
            + (f"{len(missed)} missed" if missed else "all met"))
        for line in missed:
            say(f"  MISSED {line}")
    for line in broken:
        say(f"  FAILED {line}")

    if broken:
        return EXIT_BENCHMARK_FAILED
    if regressed:
        return EXIT_REGRESSION
    if missed:
        return EXIT_TARGET_MISSED
    return EXIT_OK


ERROR_EXITS: list[tuple[type[AbsurdError], int]] = [
    (ConfigError, EXIT_USAGE),
    (DatabaseUnavailable, EXIT_DATABASE),
    (SchemaMismatch, EXIT_SCHEMA),
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # Logs go to stderr so that stdout carries only the report.
    journal.setup(args.log_level, sys.stderr)
    try:
        return run(args, argv)
    except KeyboardInterrupt:
        print("benchmark_absurd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except psycopg.OperationalError as exc:
        print(f"benchmark_absurd: lost the database: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except AbsurdError as exc:
        print(f"benchmark_absurd: {exc}", file=sys.stderr)
        for error_type, code in ERROR_EXITS:
            if isinstance(exc, error_type):
                return code
        return EXIT_BENCHMARK_FAILED


if __name__ == "__main__":
    sys.exit(main())
