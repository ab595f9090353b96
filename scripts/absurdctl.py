#!/usr/bin/env python3
"""absurdctl: look after an absurd queue from the command line.

    absurdctl.py migrate
    absurdctl.py spawn TASK_NAME --params '{"ms": "/data/obs1.ms"}' --priority 5
    absurdctl.py spawn --file tasks.jsonl
    absurdctl.py list --state failed
    absurdctl.py show TASK_ID
    absurdctl.py cancel TASK_ID / retry TASK_ID
    absurdctl.py stats [--json]
    absurdctl.py recover
    absurdctl.py embedded stop

Settings come from /etc/absurd/absurd.conf, then ABSURD_* variables, then flags.
Exit codes: see EXIT_CODES below and the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from absurd import config, embedded, journal, registry, schema, validation
from absurd.client import (
    DEFAULT_QUARANTINE_AFTER,
    TASK_STATES,
    TERMINAL_STATES,
    Client,
    TaskSpec,
)
from absurd.database import connect, redact, resolve_dsn
from absurd.registry import TaskPolicy
from absurd.errors import (
    AbsurdError,
    ConfigError,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    SchemaMismatch,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_INVALID_INPUT = 4
EXIT_NOT_FOUND = 5
EXIT_SCHEMA = 6
EXIT_NOTHING_CHANGED = 7

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILURE: "unexpected error (a bug: the message says where)",
    EXIT_USAGE: "bad command line or configuration",
    EXIT_DATABASE: "database unreachable",
    EXIT_INVALID_INPUT: "input refused; nothing was written",
    EXIT_NOT_FOUND: "no such task",
    EXIT_SCHEMA: "database schema missing, outdated or newer than this absurd",
    EXIT_NOTHING_CHANGED: "the task was already in a final state; nothing changed",
}

ERROR_EXITS: list[tuple[type[AbsurdError], int]] = [
    (ConfigError, EXIT_USAGE),
    (DatabaseUnavailable, EXIT_DATABASE),
    (InvalidInput, EXIT_INVALID_INPUT),
    (NotFound, EXIT_NOT_FOUND),
    (SchemaMismatch, EXIT_SCHEMA),
]


def build_parser() -> argparse.ArgumentParser:
    parser = config.parser(
        "Look after an absurd queue: migrate, spawn, list, show, cancel, retry, stats.",
    )
    parser.epilog = "exit codes: " + "; ".join(
        f"{code} {meaning}" for code, meaning in EXIT_CODES.items()
    )
    parser.add_argument(
        "--tasks-config", type=Path,
        help="task registry whose names and per-task defaults spawn uses; unset: "
        "/etc/absurd/tasks.conf, or the built-in DSA-110 routing without it",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="apply the schema migrations the database lacks")

    spawn = commands.add_parser("spawn", help="spawn one task, or many from a file")
    spawn.add_argument("task_name", nargs="?", help="task name (omit with --file)")
    spawn.add_argument("--params", default="{}", help="params as a JSON object")
    spawn.add_argument("--priority", type=int, default=0, help="higher runs first")
    spawn.add_argument("--delay", type=float, default=0.0, help="seconds before due")
    spawn.add_argument("--max-attempts", type=int, help="attempts before failing")
    spawn.add_argument("--timeout", type=float, help="seconds per attempt")
    spawn.add_argument("--idempotency-key", help="spawn once per key and queue")
    spawn.add_argument("--depends-on", type=task_id, nargs="+", default=[],
                       metavar="TASK_ID", help="run after these tasks complete")
    spawn.add_argument(
        "--file", type=Path,
        help="JSON lines, one task object per line (keys: task_name, params, priority, delay_s, max_attempts, timeout_s, "
        "idempotency_key, depends_on, backoff_base_s, backoff_max_s); one round trip",
    )
    spawn.add_argument(
        "--unregistered", action="store_true",
        help="spawn a task name that the task registry has no handler for",
    )
    spawn.add_argument("--json", action="store_true", help="print JSON")

    listing = commands.add_parser("list", help="list the newest tasks of the queue")
    listing.add_argument("--state", choices=TASK_STATES)
    listing.add_argument("--task-name")
    listing.add_argument("--limit", type=config.positive_int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = commands.add_parser("show", help="one task with every run")
    show.add_argument("task_id", type=task_id)
    show.add_argument("--json", action="store_true", help="print JSON")

    cancel = commands.add_parser("cancel", help="cancel a task (running: stopped)")
    cancel.add_argument("task_id", type=task_id)

    retry = commands.add_parser("retry", help="retry a failed or cancelled task")
    retry.add_argument("task_id", type=task_id)

    stats = commands.add_parser("stats", help="counts by state and queue ages")
    stats.add_argument("--json", action="store_true", help="print JSON")

    recover = commands.add_parser(
        "recover", help="recover expired leases now (workers also do this)"
    )
    recover.add_argument("--all-queues", action="store_true")
    recover.add_argument("--quarantine-after", type=config.positive_int,
                         default=DEFAULT_QUARANTINE_AFTER)

    embedded_cmd = commands.add_parser("embedded", help="the embedded PostgreSQL")
    embedded_cmd.add_argument("action", choices=["start", "stop"])
    return parser


def task_id(text: str) -> int:
    """argparse type: a task id, a whole number from 1 to 2^63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id") from None
    if not 1 <= value <= validation.MAX_TASK_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id")
    return value


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=True))


def parse_params(text: str) -> dict[str, Any]:
    try:
        params = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"invalid --params: not JSON we can read ({exc})") from None
    if not isinstance(params, dict):
        raise InvalidInput(
            f"invalid --params: expected a JSON object, got {type(params).__name__}"
        )
    return params


def read_task_file(path: Path, defaults: dict[str, TaskPolicy]) -> list[TaskSpec]:
    """Every task of a JSON-lines file, or InvalidInput naming the first bad line."""
    known = set(TaskSpec.__dataclass_fields__)
    specs = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InvalidInput(f"{path}:{number}: not JSON we can read ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("task_name"), str):
            raise InvalidInput(
                f"{path}:{number}: expected an object with a task_name text"
            )
        unknown = set(item) - known
        if unknown:
            raise InvalidInput(
                f"{path}:{number}: unknown keys {sorted(unknown)}; known: "
                f"{sorted(known)}"
            )
        policy = defaults.get(item["task_name"])
        options = {**(policy.spawn_options() if policy else {}), **item}
        try:
            specs.append(TaskSpec(**options))
            specs[-1].encoded()
        except (TypeError, InvalidInput) as exc:
            raise InvalidInput(f"{path}:{number}: {exc}") from None
    if not specs:
        raise InvalidInput(f"{path}: no tasks in the file")
    return specs


def check_registered(specs: list[TaskSpec], policies: dict[str, TaskPolicy]) -> None:
    """Refuse task names no worker would claim: the registry has no handler for them."""
    for spec in specs:
        if spec.task_name not in policies:
            raise InvalidInput(
                f"unknown task name {spec.task_name!r}: the task registry has no "
                f"handler for it (known: {', '.join(sorted(policies))}); add it to "
                "tasks.conf, or pass --unregistered to spawn it anyway"
            )


def command_spawn(client: Client, args: argparse.Namespace) -> int:
    policies = registry.load_policies(args.tasks_config)
    if args.file:
        specs = read_task_file(args.file, policies)
    else:
        policy = policies.get(args.task_name)
        options: dict[str, Any] = policy.spawn_options() if policy else {}
        if args.max_attempts is not None:
            options["max_attempts"] = args.max_attempts
        if args.timeout is not None:
            options["timeout_s"] = args.timeout
        specs = [
            TaskSpec(
                args.task_name, parse_params(args.params), priority=args.priority,
                delay_s=args.delay, idempotency_key=args.idempotency_key,
                depends_on=args.depends_on, **options,
            )
        ]
        specs[0].encoded()
    if not args.unregistered:
        check_registered(specs, policies)

    spawned = client.spawn_many(specs)
    if args.json:
        print_json([{"task_id": s.task_id, "created": s.created} for s in spawned])
    else:
        for item in spawned:
            suffix = "" if item.created else " (exists: same idempotency key)"
            print(f"{item.task_id}{suffix}")
    return EXIT_OK


def command_list(client: Client, args: argparse.Namespace) -> int:
    tasks = client.list_tasks(args.state, args.task_name, args.limit)
    if args.json:
        print_json(tasks)
    elif tasks:
        print(tabulate(tasks, headers="keys"))
    else:
        print("no tasks")
    return EXIT_OK


def command_show(client: Client, args: argparse.Namespace) -> int:
    task = client.show(args.task_id)
    if args.json:
        print_json(task)
        return EXIT_OK
    runs = task.pop("runs")
    for key, value in task.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        print(f"{key:>16}: {value}")
    print()
    if runs:
        for run in runs:
            run["error"] = (run["error"] or {}).get("message", "")
        print(tabulate(runs, headers="keys"))
    else:
        print("no runs yet")
    return EXIT_OK


def command_cancel(client: Client, args: argparse.Namespace) -> int:
    before = client.cancel(args.task_id)
    if before in TERMINAL_STATES:
        print(f"task {args.task_id} was already {before}; nothing changed")
        return EXIT_NOTHING_CHANGED
    note = " (its worker is told to stop it)" if before == "running" else ""
    print(f"task {args.task_id} cancelled; it was {before}{note}")
    return EXIT_OK


def command_retry(client: Client, args: argparse.Namespace) -> int:
    before = client.retry(args.task_id)
    print(f"task {args.task_id} is pending again; it was {before}")
    return EXIT_OK


def command_stats(client: Client, args: argparse.Namespace) -> int:
    stats = client.stats()
    if args.json:
        print_json(stats.__dict__)
        return EXIT_OK
    rows = [(name, value) for name, value in stats.__dict__.items() if name != "queue"]
    print(tabulate(rows, headers=[f"queue {stats.queue}", ""]))
    return EXIT_OK


def command_recover(client: Client, args: argparse.Namespace) -> int:
    recovered = client.recover_expired(args.quarantine_after, args.all_queues)
    for item in recovered:
        print(f"run {item.run_id} of task {item.task_id}: {item.outcome}")
    print(f"{len(recovered)} expired lease(s) recovered")
    return EXIT_OK


COMMANDS = {
    "spawn": command_spawn,
    "list": command_list,
    "show": command_show,
    "cancel": command_cancel,
    "retry": command_retry,
    "stats": command_stats,
    "recover": command_recover,
}


def run(args: argparse.Namespace) -> int:
    if args.command == "embedded":
        if args.action == "stop":
            stopped = embedded.stop(args.state_dir)
            print("stopped" if stopped else "not running")
        else:
            print(redact(embedded.ensure_running(args.state_dir)))
        return EXIT_OK

    if args.command == "migrate":
        dsn = resolve_dsn(args.dsn, args.state_dir)
        with connect(dsn, application_name="absurdctl") as conn:
            applied = schema.migrate(conn)
        done = ", ".join(map(str, applied)) if applied else "none (already current)"
        print(f"schema version {schema.latest_version()}; applied: {done}")
        return EXIT_OK

    dsn = schema.ready_dsn(args.dsn, args.state_dir)
    with Client.connect(dsn, args.queue, application_name="absurdctl") as client:
        return COMMANDS[args.command](client, args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "spawn" and bool(args.file) == bool(args.task_name):
        parser.error("spawn takes a task name or --file, one of the two")
    # Logs go to stderr so that stdout carries only the command's output.
    journal.setup(args.log_level, sys.stderr)
    try:
        return run(args)
    except AbsurdError as exc:
        print(f"absurdctl: {exc}", file=sys.stderr)
        for error_type, code in ERROR_EXITS:
            if isinstance(exc, error_type):
                return code
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
