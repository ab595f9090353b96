"""Running one handler to its outcome: in the calling thread, or as a child process.

Thread mode calls the Python handler where it is: light work, sharing the worker's
process. Process mode starts a child in a session of its own, either ``python -m
absurd.child`` for a Python handler or the task type's command, and supervises it:
when the run is told to stop (cancel, timeout, lost lease, shutdown) the child and
every process it started get SIGTERM, then SIGKILL after the task type's grace.
execute() never raises: every failure becomes an Outcome.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from absurd import registry
from absurd.context import PermanentFailure, TaskContext, TaskStopped
from absurd.outcome import Outcome, completed, failed, from_exception
from absurd.registry import Handler

#: How often a supervised child is checked for a stop request, in seconds.
SUPERVISE_POLL_S = 0.05
#: How long to read what a child wrote after it exited, in seconds.
DRAIN_AFTER_EXIT_S = 1.0
READ_CHUNK = 65536


def execute(handler: Handler, ctx: TaskContext, log_level: str = "INFO") -> Outcome:
    """Run the task's handler to its outcome."""
    try:
        if handler.policy.command is not None:
            return run_command(handler, ctx)
        if handler.policy.mode == "process":
            return run_python_child(handler, ctx, log_level)
        return run_in_thread(handler, ctx)
    except Exception as exc:  # a fault of the runtime itself: fail this run, not all
        return from_exception(exc)


# -- thread mode ----------------------------------------------------------------------


def call_handler(function: Callable[..., Any], with_context: bool,
                 ctx: TaskContext) -> Any:
    """Call a handler, running it to the end when it returns a coroutine."""
    result = function(ctx.params, ctx) if with_context else function(ctx.params)
    if inspect.isawaitable(result):
        result = asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def run_in_thread(handler: Handler, ctx: TaskContext) -> Outcome:
    assert handler.function is not None
    try:
        result = call_handler(handler.function, handler.takes_context, ctx)
    except PermanentFailure as exc:
        return from_exception(exc, retryable=False)
    except TaskStopped as exc:
        return from_exception(exc)
    except BaseException as exc:  # a handler may raise anything, SystemExit included
        return from_exception(exc)
    return completed(result)


# -- process mode ---------------------------------------------------------------------


class Tail:
    """The complete lines a child writes to a pipe, and the last bytes of it."""

    def __init__(self, limit: int = 4000) -> None:
        self.limit = limit
        self.data = bytearray()
        self.partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        if self.limit:
            self.data += chunk
            del self.data[: -self.limit]
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def signal_tree(pid: int, sig: int) -> None:
    """Send sig to the session of pid and to every descendant that left it."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for process in descendants:
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


class Supervised:
    """A child process in a session of its own, watched until it and its tree end."""

    def __init__(self, argv: list[str], ctx: TaskContext, grace_s: float, *,
                 env: dict[str, str] | None = None, stdin: bytes | None = None,
                 with_channel: bool = False) -> None:
        self.ctx = ctx
        self.grace_s = grace_s
        self.stderr = Tail()
        self.messages: list[dict[str, Any]] = []
        self._channel = Tail(limit=0)
        channel_read, channel_write = os.pipe() if with_channel else (-1, -1)
        try:
            self.process = subprocess.Popen(
                [*argv, str(channel_write)] if with_channel else argv,
                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                stdout=None, stderr=subprocess.PIPE,
                pass_fds=(channel_write,) if with_channel else (),
                start_new_session=True, env=env,
            )
        except OSError:
            if with_channel:
                os.close(channel_read)
            raise
        finally:
            if with_channel:
                os.close(channel_write)

        self.selector = selectors.DefaultSelector()
        assert self.process.stderr is not None
        self.selector.register(self.process.stderr, selectors.EVENT_READ, "stderr")
        if with_channel:
            self.selector.register(channel_read, selectors.EVENT_READ, "channel")
        if stdin is not None:
            self._write_stdin(stdin)

    def _write_stdin(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # the child died before reading; its exit status says why

    def wait(self) -> int:
        """Read the child's output until it exits, stopping it when told; its status."""
        control = self.ctx.control
        term_at: float | None = None
        killed = False
        while self.process.poll() is None:
            if control.stopped and term_at is None:
                term_at = time.monotonic()
                signal_tree(self.process.pid, signal.SIGTERM)
            grace = self.grace_s if control.grace_s is None else control.grace_s
            if term_at is not None and not killed and (
                    time.monotonic() >= term_at + grace):
                killed = True
                signal_tree(self.process.pid, signal.SIGKILL)
            self._read(SUPERVISE_POLL_S)

        # The leader is gone; whatever it left behind in its session goes too.
        signal_tree(self.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
        while self.selector.get_map() and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        self.selector.close()
        return self.process.returncode

    def _read(self, timeout: float) -> None:
        for key, _ in self.selector.select(max(0.0, timeout)):
            chunk = os.read(key.fd, READ_CHUNK)
            if not chunk:
                self.selector.unregister(key.fileobj)
                if isinstance(key.fileobj, int):
                    os.close(key.fileobj)
                else:
                    key.fileobj.close()
                continue
            if key.data == "stderr":
                for line in self.stderr.feed(chunk):
                    self.ctx.log.info("stderr: %s", line)
            else:
                for line in self._channel.feed(chunk):
                    self._take_message(line)

    def _take_message(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if "progress" in message:
            self.ctx.control.report_progress(str(message["progress"]))
        else:
            self.messages.append(message)


def _exit_failure(what: str, status: int, stderr: str, retryable: bool) -> Outcome:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        message = f"{what} was killed by signal {name}"
    else:
        message = f"{what} exited with status {status}"
    return failed("CommandFailed", message, retryable=retryable, exit_status=status,
                  stderr_tail=stderr)


def run_command(handler: Handler, ctx: TaskContext) -> Outcome:
    """Run the task type's command with the task's params as arguments."""
    policy = handler.policy
    assert policy.command is not None
    try:
        argv = registry.render_command(policy.command, ctx.params)
    except KeyError as exc:
        return failed(
            "MissingParam",
            f"the command of task {ctx.task_name} needs the param {exc.args[0]!r}, "
            "which this task lacks or sets to null; spawn it with that param",
            retryable=False,
        )

    try:
        child = Supervised(argv, ctx, policy.kill_grace_s)
    except OSError as exc:
        return failed("CommandFailed", f"cannot start {argv[0]}: {exc.strerror}",
                      retryable=False)
    status = child.wait()
    if status == 0:
        return completed({"exit_status": 0})
    return _exit_failure(argv[0], status, child.stderr.text(),
                         status not in policy.non_retryable_exit_codes)


def run_python_child(handler: Handler, ctx: TaskContext, log_level: str) -> Outcome:
    """Run a Python handler in a child process of its own."""
    request = {"handler": handler.policy.handler, "context": ctx.describe(),
               "log_level": log_level}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = Supervised(
        [sys.executable, "-m", "absurd.child"], ctx, handler.policy.kill_grace_s,
        env=env, stdin=json.dumps(request).encode(), with_channel=True,
    )
    status = child.wait()
    outcomes = [m["outcome"] for m in child.messages if "outcome" in m]
    if outcomes:
        return Outcome(**outcomes[-1])
    return _exit_failure(f"the child of {handler.policy.handler}", status,
                         child.stderr.text(), retryable=True)
