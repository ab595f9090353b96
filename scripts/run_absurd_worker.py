#!/usr/bin/env python3
"""Run one absurd worker: the process systemd starts as absurd-worker@N.

Reads /etc/absurd/absurd.conf, then /etc/absurd/worker@N.conf for --instance N, then
ABSURD_* environment variables, then flags. Exits 0 after a clean stop (SIGTERM:
drain, release the rest), 2 on a configuration error, 3 when the database stays
unreachable at startup, 1 on anything unexpected.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from absurd import config, journal, registry, validation
from absurd.database import redact, resolve_dsn
from absurd.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidInput,
    SchemaMismatch,
)
from absurd.worker import Worker, WorkerSettings

log = logging.getLogger("absurd.run_worker")

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3

INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
INSTANCE_CONFIG = "/etc/absurd/worker@{}.conf"


def instance_from(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The --instance given on the command line or in the environment, read early
    because it chooses a config file."""
    found = environ.get("ABSURD_INSTANCE")
    for index, word in enumerate(argv):
        if word == "--instance" and index + 1 < len(argv):
            found = argv[index + 1]
        elif word.startswith("--instance="):
            found = word.partition("=")[2]
    return found or None


def build_parser(instance: str | None):
    extra = [INSTANCE_CONFIG.format(instance)] if instance else []
    parser = config.parser("Run one absurd worker: claim tasks of a queue and run "
                           "their handlers.", config_files=extra)
    parser.add_argument("--instance", help="instance name, as in absurd-worker@NAME; "
                        "also reads " + INSTANCE_CONFIG.format("NAME"))
    parser.add_argument("--concurrency", type=config.positive_int, default=4,
                        help="tasks run at once")
    parser.add_argument("--lease", type=config.positive_float, default=30.0,
                        help="seconds a claim holds without renewal; renewed every "
                        "lease/3")
    parser.add_argument("--poll-interval", type=config.positive_float, default=5.0,
                        help="seconds between claims when no NOTIFY arrives")
    parser.add_argument("--drain-timeout", type=config.positive_float, default=60.0,
                        help="seconds running tasks get to finish after SIGTERM "
                        "before they are released")
    parser.add_argument("--startup-timeout", type=config.positive_float, default=60.0,
                        help="seconds to wait for the database at startup")
    parser.add_argument("--tasks-config", type=Path,
                        help="task registry; unset: /etc/absurd/tasks.conf, or the "
                        "built-in DSA-110 routing when that file does not exist")
    return parser


def check_settings(args) -> None:
    try:
        validation.check_queue_name(args.queue)
    except InvalidInput as exc:
        raise ConfigError(str(exc)) from None
    if args.instance is not None and not INSTANCE_NAME.fullmatch(args.instance):
        raise ConfigError(f"invalid instance {args.instance!r}: use 1-64 letters, "
                          "digits, '.', '_', ':' or '-'")
    if not 1 <= args.lease <= validation.MAX_LEASE_S:
        raise ConfigError(f"lease = {args.lease:g}s is outside 1 to "
                          f"{validation.MAX_LEASE_S:g}: shorter cannot be renewed "
                          "reliably, longer hides a dead worker's tasks for too long")
    if args.concurrency > 10_000:
        raise ConfigError(f"concurrency = {args.concurrency} is over 10000")


def load_registry(path: Path | None) -> registry.Registry:
    loaded = registry.load_handlers(registry.load_policies(path))
    if not loaded.handlers:
        problems = "; ".join(f"{name}: {why}" for name, why in loaded.problems.items())
        raise ConfigError(f"no handler of the tasks config could be loaded, so this "
                          f"worker has nothing to run ({problems})")
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    instance = instance_from(argv, os.environ)
    args = build_parser(instance).parse_args(argv)
    journal.setup(args.log_level)
    # A watchdog timeout sends SIGABRT: leave every thread's stack in the journal.
    faulthandler.enable()

    try:
        check_settings(args)
        tasks = load_registry(args.tasks_config)
        dsn = resolve_dsn(args.dsn, args.state_dir)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except DatabaseUnavailable as exc:
        log.error("%s", exc)
        return EXIT_DATABASE

    settings = WorkerSettings(
        dsn=dsn, queue=args.queue, concurrency=args.concurrency, lease_s=args.lease,
        poll_interval_s=args.poll_interval, drain_timeout_s=args.drain_timeout,
        startup_timeout_s=args.startup_timeout, instance=args.instance,
        migrate=not args.dsn, log_level=args.log_level,
    )
    try:
        Worker(settings, tasks).run()
    except DatabaseUnavailable as exc:
        log.error("giving up on the database (%s) dsn=%s", exc, redact(dsn))
        return EXIT_DATABASE
    except (SchemaMismatch, ConfigError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except Exception:
        log.exception("worker failed unexpectedly")
        return EXIT_UNEXPECTED
    return EXIT_OK


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    # Exit now: a handler thread that never returns (its task already released)
    # must not hold the process at interpreter shutdown.
    os._exit(code)
