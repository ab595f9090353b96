"""The handler's context: what a running task knows about itself and how it talks back.

A handler is called as ``handler(params, ctx)`` (or ``handler(params)``). The context
carries the task id, run id, attempt, params, a logger that adds the task's fields to
every line, the results of the tasks it depends on, a progress message for operators,
and the stop flag the worker raises when the run is cancelled, times out, loses its
lease or the worker shuts down. Leases are renewed by the worker for every running
task; a handler's heartbeat() is how a long loop learns that it must stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from absurd.errors import AbsurdError

#: Why a run was told to stop.
STOP_CANCELLED = "cancelled"
STOP_TIMEOUT = "timeout"
STOP_LOST = "lost"
STOP_SHUTDOWN = "shutdown"

task_log = logging.getLogger("absurd.task")


class PermanentFailure(AbsurdError):
    """The task cannot succeed however often it is tried: it fails now, not retried."""


class TaskStopped(AbsurdError):
    """The worker told this run to stop; its outcome will be discarded."""


class RunControl:
    """What the worker and a running handler share: the stop flag and the progress."""

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        # An Event costs more than a whole no-op task: made only when someone waits.
        self._event: threading.Event | None = None
        self.stopped = False
        self.reason: str | None = None
        #: Seconds between SIGTERM and SIGKILL of a child; None: the task type's.
        self.grace_s: float | None = None
        self.progress: str | None = None

    def stop(self, reason: str, grace_s: float | None = None) -> None:
        """Ask the run to stop; the first reason given is the one that counts."""
        with self._lock:
            if grace_s is not None:
                self.grace_s = grace_s if self.grace_s is None else min(self.grace_s,
                                                                         grace_s)
            if not self.stopped:
                self.reason = reason
                self.stopped = True
            if self._event is not None:
                self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to timeout seconds; True as soon as the run is told to stop."""
        with self._lock:
            if self.stopped:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def report_progress(self, message: str) -> None:
        self.progress = message
        self._wake()


class TaskLog(logging.LoggerAdapter):
    """A logger that appends the task's key=value fields to every message."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{msg} {self.extra['fields']}", kwargs


class TaskContext:
    """One run of one task, as its handler sees it."""

    def __init__(
        self,
        *,
        queue: str,
        task_id: int,
        run_id: int,
        task_name: str,
        params: dict[str, Any],
        attempt: int,
        max_attempts: int,
        dependency_results: dict[str, Any],
        control: RunControl,
    ) -> None:
        self.queue = queue
        self.task_id = task_id
        self.run_id = run_id
        self.task_name = task_name
        self.params = params
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.dependency_results = {int(k): v for k, v in dependency_results.items()}
        self.control = control
        self.fields = (
            f"queue={queue} task={task_name} task_id={task_id} run_id={run_id} "
            f"attempt={attempt}"
        )
        self._log: TaskLog | None = None

    @property
    def log(self) -> TaskLog:
        """A logger that adds this run's key=value fields to every message."""
        if self._log is None:
            self._log = TaskLog(task_log, {"fields": self.fields})
        return self._log

    @property
    def cancelled(self) -> bool:
        """True once the run must stop: cancelled, timed out, lease lost or shutdown."""
        return self.control.stopped

    @property
    def stop_reason(self) -> str | None:
        return self.control.reason

    def heartbeat(self) -> None:
        """Check in from a long loop; raises TaskStopped once the run must stop."""
        if self.control.stopped:
            raise TaskStopped(
                f"run {self.run_id} of task {self.task_id} was told to stop "
                f"({self.control.reason}); return or raise now"
            )

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early with TaskStopped when the run must stop."""
        self.control.wait(seconds)
        self.heartbeat()

    def set_progress(self, message: str) -> None:
        """A short progress message for operators, shown with the task."""
        self.control.report_progress(str(message)[:1000])

    def describe(self) -> dict[str, Any]:
        """The fields a child process needs to rebuild this context."""
        return {
            "queue": self.queue,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "task_name": self.task_name,
            "params": self.params,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "dependency_results": {str(k): v for k, v in
                                   self.dependency_results.items()},
        }
