"""Real worker processes for tests: start scripts/run_absurd_worker.py, signal it, read
its log; a task registry routing to tests/handlers.py; a waiting helper with a bound.

Test modules import the fixtures they use from here (``from workerproc import ...``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCRIPT = REPO / "scripts" / "run_absurd_worker.py"
QUEUE = "test-queue"
#: Set by systemd; a test sets them itself when it wants them.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
T = TypeVar("T")

TASKS_CONFIG = """
[noop]
handler = handlers:noop

[echo]
handler = handlers:echo

[async-echo]
handler = handlers:async_echo

[sleep]
handler = handlers:sleep

[sleep-process]
handler = handlers:sleep
mode = process
kill_grace = 5

[stubborn]
handler = handlers:sleep_ignoring_stop
kill_grace = 5

[hang]
handler = handlers:hang_until_attempt

[fail]
handler = handlers:fail

[permanent]
handler = handlers:permanent

[fail-once]
handler = handlers:fail_once

[bad-result]
handler = handlers:bad_result

[hold-gil]
handler = handlers:hold_gil

[child]
handler = handlers:report_pid
mode = process

[stubborn-tree]
command = {python} {tests}/stubborn_tree.py {{pids}}
kill_grace = 1

[exit]
command = {python} -c
    "import sys; sys.stderr.write(sys.argv[2]); sys.exit(int(sys.argv[1]))"
    {{code}} {{message}}
non_retryable_exit_codes = 64

[unloadable]
handler = no_such_module:handler

[missing-tool]
command = /nonexistent/tool {{file}}
"""


def write_tasks_config(folder: Path) -> Path:
    path = folder / "tasks.conf"
    path.write_text(TASKS_CONFIG.format(python=sys.executable, tests=TESTS))
    return path


def wait_for(check: Callable[[], T], timeout: float, what: str,
             interval: float = 0.02) -> T:
    """Poll check until it returns something true; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class WorkerProcess:
    """One scripts/run_absurd_worker.py process, its output in a file."""

    def __init__(self, dsn: str, tasks_config: Path, folder: Path, name: str,
                 args: tuple[str, ...], env: dict[str, str] | None) -> None:
        self.log_path = folder / f"{name}.log"
        environment = {key: value for key, value in os.environ.items()
                       if key not in SYSTEMD_VARIABLES}
        environment.update(PYTHONPATH=str(TESTS), **(env or {}))
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--dsn", dsn, "--queue", QUEUE,
                 "--tasks-config", str(tasks_config), *args],
                stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=folder,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(lambda: "worker ready" in self.log() or (
                 self.process.poll() is not None),
                 timeout, "the worker to be ready")
        assert self.process.poll() is None, self.log()

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def tasks_config(tmp_path: Path) -> Path:
    return write_tasks_config(tmp_path)


@pytest.fixture
def start_worker(dsn: str, tasks_config: Path, tmp_path: Path
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes on the test's database; all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              database: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(database or dsn, tasks_config, tmp_path,
                               f"worker{len(started)}", args, env)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()


class NotifySocket:
    """A real unix datagram socket standing where systemd's notify socket would be."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="absurd-notify-"))
        self.path = self.folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def collect(self, seconds: float) -> list[str]:
        """Messages that arrive within seconds, added to self.messages."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                break
        return self.messages

    def wait_for(self, text: str, timeout: float) -> str:
        def seen() -> Any:
            self.collect(0.05)
            return next((m for m in self.messages if text in m), None)
        return wait_for(seen, timeout, f"{text!r} on the notify socket", interval=0)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.folder.rmdir()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()
