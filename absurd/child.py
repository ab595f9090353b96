"""The child process of a process-mode Python handler: ``python -m absurd.child FD``.

The worker starts this module in a session of its own (so that a timeout or a cancel
stops the handler with every process it started), writes the run's description as JSON
to its stdin, and reads JSON lines from file descriptor FD: ``{"progress": text}`` as
the handler reports progress, then one ``{"outcome": {...}}``. The handler's own
stdout and stderr stay its own. SIGTERM raises TaskStopped in the handler.

``python -m absurd.child --check REF...`` loads each handler reference and prints one
JSON object mapping each reference to the problem found, or null: the worker checks
its process-mode handlers this way at startup without importing them itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from types import FrameType
from typing import IO, Any

from absurd import journal
from absurd.context import (
    STOP_SHUTDOWN,
    PermanentFailure,
    RunControl,
    TaskContext,
    TaskStopped,
)
from absurd.errors import ConfigError
from absurd.execution import call_handler
from absurd.outcome import Outcome, completed, from_exception
from absurd.registry import import_callable, takes_context


class ChildControl(RunControl):
    """The run control of a child: progress travels to the worker as a JSON line."""

    def __init__(self, channel: IO[str]) -> None:
        super().__init__()
        self.channel = channel

    def report_progress(self, message: str) -> None:
        send(self.channel, {"progress": message})


def send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message, separators=(",", ":"), default=str) + "\n")
    channel.flush()


def run(channel: IO[str], request: dict[str, Any]) -> Outcome:
    control = ChildControl(channel)
    ctx = TaskContext(control=control, **request["context"])

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        first = not control.stopped
        control.stop(STOP_SHUTDOWN)
        if first:
            raise TaskStopped("the worker stopped this run (SIGTERM)")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        function = import_callable(request["handler"])
        result = call_handler(function, takes_context(function), ctx)
    except (PermanentFailure, ConfigError) as exc:
        return from_exception(exc, retryable=False)
    except BaseException as exc:  # the handler's failure, whatever it is
        return from_exception(exc)
    return completed(result)


def check(references: list[str]) -> dict[str, str | None]:
    problems: dict[str, str | None] = {}
    for reference in references:
        try:
            takes_context(import_callable(reference))
            problems[reference] = None
        except ConfigError as exc:
            problems[reference] = str(exc)
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        print(json.dumps(check(argv[1:])))
        return 0

    channel = os.fdopen(int(argv[0]), "w", encoding="utf-8")
    request = json.load(sys.stdin)
    journal.setup(request.get("log_level", "INFO"))
    outcome = run(channel, request)
    send(channel, {"outcome": asdict(outcome)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
