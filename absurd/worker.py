"""The worker runtime: claim tasks, run them, renew their leases, record their outcomes.

One worker process has one identity (a fresh uuid per process, never the hostname, so
that a restarted worker cannot pass for its dead predecessor), a connection for queue
operations, a LISTEN connection for wake-ups, and ``concurrency`` slots that run
handlers. Its main thread runs the loop, and only the main thread talks to the
database and to systemd:

- claim as many tasks as there are free slots, in one round trip;
- write finished outcomes in batches (complete_many, fail_many, release);
- renew the leases of every running task every lease/3;
- recover the expired leases of dead workers every lease/2;
- stop runs that time out, are cancelled (NOTIFY absurd_cancel or the heartbeat's
  answer) or whose lease was lost;
- feed the systemd watchdog and publish STATUS=.

Between turns it sleeps in select() on the LISTEN socket and a self-pipe that the
slots and the signal handlers write to, at most until its next duty is due. A database
outage is survived: tasks keep running, their outcomes wait, and the loop reconnects
with backoff. SIGTERM or SIGINT stops claiming and drains; a second one stops at once.
Tasks that did not finish are released to pending with no attempt charged.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from queue import SimpleQueue
from types import FrameType
from typing import Any

import psycopg

from absurd import execution, schema
from absurd.client import ClaimedTask, Client
from absurd.context import (
    STOP_CANCELLED,
    STOP_LOST,
    STOP_SHUTDOWN,
    STOP_TIMEOUT,
    RunControl,
    TaskContext,
)
from absurd.database import connect, connect_with_retry
from absurd.errors import DatabaseUnavailable, InvalidInput
from absurd.listener import Listener
from absurd.notify import Notifier
from absurd.outcome import Outcome, failed
from absurd.reconnect import ReconnectSchedule
from absurd.registry import Registry
from absurd.slots import Slots

log = logging.getLogger(__name__)

#: The loop wakes at least this often, in seconds, to keep STATUS= and timers fresh.
MAX_WAIT_S = 1.0
#: After a claim came back short while a task seemed due (another worker was taking
#: it), look again this soon, in seconds, rather than spinning.
RECHECK_S = 0.05
#: A handler's progress message is written at most this often per run, in seconds.
PROGRESS_EVERY_S = 1.0
#: At shutdown, how long past their grace to wait for child processes to end.
CHILD_EXIT_WAIT_S = 2.0

COMPLETE, FAIL, RELEASE, DISCARD = "complete", "fail", "release", "discard"


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to know; the script fills it from config, env and flags."""

    dsn: str
    queue: str
    concurrency: int = 4
    lease_s: float = 30.0
    poll_interval_s: float = 5.0
    drain_timeout_s: float = 60.0
    startup_timeout_s: float = 60.0
    instance: str | None = None
    migrate: bool = False
    log_level: str = "INFO"


@dataclass(eq=False)
class Run:
    """A claimed task this worker is running (or has run and not yet recorded)."""

    task: ClaimedTask
    context: TaskContext
    mode: str
    grace_s: float
    started_at: float
    deadline: float | None
    give_up_at: float | None = None
    written_early: bool = False
    progress_sent: str | None = None
    progress_sent_at: float = 0.0

    @property
    def control(self) -> RunControl:
        return self.context.control

    @property
    def run_id(self) -> int:
        return self.task.run_id


@dataclass(eq=False)
class Unwritten:
    """An outcome waiting to be written: complete, fail, release or discard."""

    run: Run
    action: str
    outcome: Outcome
    duration_s: float


class Worker:
    """One worker process's loop over one queue."""

    def __init__(self, settings: WorkerSettings, registry: Registry,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.task_names = registry.task_names
        self.notifier = notifier or Notifier()
        self.worker_id = uuid.uuid4()
        suffix = f"@{settings.instance}" if settings.instance else ""
        self.application_name = f"absurd-worker{suffix}"
        self.listener = Listener(settings.dsn, settings.queue,
                                 f"absurd-worker{suffix} listen")
        self.db: Client | None = None
        self.db_schedule = ReconnectSchedule()

        self.running: dict[int, Run] = {}
        self.unwritten: list[Unwritten] = []
        self._finished: SimpleQueue[tuple[Run, Outcome, float]] = SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self.slots: Slots[Run] = Slots(settings.concurrency, self._execute, "slot")

        self._signals_received = 0
        self._signals_seen = 0
        self.stopping = False
        self.immediate = False
        self.drain_deadline: float | None = None

        self._claim_at = 0.0
        self._backlog = False
        self._heartbeat_at = 0.0
        self._recover_at = 0.0
        self.last_claim: str = "never"

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Work until told to stop. Raises DatabaseUnavailable or SchemaMismatch when
        the database cannot be used at startup."""
        previous = self._install_signal_handlers()
        try:
            if self._start():
                self._loop()
        finally:
            self._restore_signal_handlers(previous)
            self._close()

    def _loop(self) -> None:
        try:
            while not self._done():
                self._wait()
                self._turn()
        except BaseException:
            log.critical("worker loop failed; releasing %d tasks and stopping",
                         len(self.running))
            self.immediate = True
            self._shutdown()
            raise
        self._shutdown()

    def _start(self) -> bool:
        settings = self.settings
        log.info(
            "worker starting worker=%s queue=%s instance=%s concurrency=%d lease=%gs "
            "poll_interval=%gs handlers=%s", self.worker_id, settings.queue,
            settings.instance or "-", settings.concurrency, settings.lease_s,
            settings.poll_interval_s, ",".join(self.task_names))
        for name, problem in sorted(self.registry.problems.items()):
            log.warning("handler not loaded (%s), tasks of this name are not "
                        "claimed queue=%s task=%s", problem, settings.queue, name)

        conn = connect_with_retry(
            settings.dsn, application_name=self.application_name,
            give_up_after_s=settings.startup_timeout_s,
            should_stop=lambda: self._signals_received > 0,
            on_wait=self._on_startup_wait,
        )
        if conn is None:
            log.info("worker stopped before the database was reachable worker=%s",
                     self.worker_id)
            return False
        if settings.migrate:
            schema.migrate(conn)
        else:
            schema.check(conn)
        self.db = Client(conn, settings.queue)
        self._register()
        self.notifier.ready(self._status_text())
        self.listener.connect()
        log.info("worker ready worker=%s queue=%s", self.worker_id, settings.queue)
        return True

    def _on_startup_wait(self, exc: DatabaseUnavailable, delay: float) -> None:
        log.warning("database unavailable at startup, retrying in %.1fs: %s", delay,
                    exc)
        self.notifier.status(f"waiting for the database: {exc}")
        self.notifier.ping()

    def _register(self) -> None:
        assert self.db is not None
        self.db.register_worker(
            self.worker_id, hostname=socket.gethostname(), pid=os.getpid(),
            instance=self.settings.instance, concurrency=self.settings.concurrency,
            task_names=self.task_names, lease_s=self.settings.lease_s,
        )

    def _done(self) -> bool:
        if not self.stopping:
            return False
        if self.immediate:
            return True
        assert self.drain_deadline is not None
        if time.monotonic() >= self.drain_deadline:
            return True
        return not self.running and not self.unwritten

    def _shutdown(self) -> None:
        """Stop what still runs, record every outcome, give back the rest."""
        if self.running:
            log.info("stopping %d tasks that did not finish queue=%s",
                     len(self.running), self.settings.queue)
        grace = 0.0 if self.immediate else None
        for run in self.running.values():
            run.control.stop(STOP_SHUTDOWN, grace_s=grace)
        self._wait_for_children()

        for run in list(self.running.values()):
            if not run.written_early:
                self.unwritten.append(Unwritten(run, RELEASE, Outcome(),
                                                time.monotonic() - run.started_at))
        self.running.clear()
        self._write_last_outcomes()

    def _wait_for_children(self) -> None:
        """Child processes are stopped with their trees before their tasks go back."""
        children = [r for r in self.running.values() if r.mode == "process"]
        if not children:
            return
        grace = 0.0 if self.immediate else max(r.grace_s for r in children)
        deadline = time.monotonic() + grace + CHILD_EXIT_WAIT_S
        while time.monotonic() < deadline and any(
                r.run_id in self.running for r in children):
            self.notifier.ping()
            select.select([self._wake_read], [], [], 0.1)
            self._drain_wake_pipe()
            self._take_finished()

    def _write_last_outcomes(self) -> None:
        if not self.unwritten:
            return
        if self.db is None:
            self._reconnect_database(time.monotonic(), force=True)
        try:
            if self.db is None:
                raise DatabaseUnavailable("the database is still unreachable")
            self._flush()
        except DatabaseUnavailable as exc:
            log.error(
                "could not record %d outcomes before exit (%s); their tasks return "
                "to the queue when their leases expire queue=%s", len(self.unwritten),
                exc, self.settings.queue)

    def _close(self) -> None:
        if self.db is not None:
            try:
                self.db.deregister_worker(self.worker_id)
            except DatabaseUnavailable as exc:
                log.warning("could not deregister (%s) worker=%s", exc, self.worker_id)
            self.db.close()
            self.db = None
        self.listener.close()
        log.info("worker stopped worker=%s queue=%s", self.worker_id,
                 self.settings.queue)

    # -- signals -----------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[-1] = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals_received += 1  # only a flag: the loop does the rest

    def _notice_signals(self, now: float) -> None:
        if self._signals_received == self._signals_seen:
            return
        self._signals_seen = self._signals_received
        if not self.stopping:
            self.stopping = True
            self.drain_deadline = now + self.settings.drain_timeout_s
            log.info("stopping: no more claims, draining %d tasks for up to %gs "
                     "worker=%s queue=%s", len(self.running),
                     self.settings.drain_timeout_s, self.worker_id, self.settings.queue)
            self.notifier.stopping(self._status_text())
        elif not self.immediate:
            self.immediate = True
            log.warning("second stop signal: releasing %d tasks now worker=%s",
                        len(self.running), self.worker_id)

    # -- the loop ----------------------------------------------------------------------

    def _wait(self) -> None:
        """Sleep until a socket, a slot or a signal speaks, or the next duty is due."""
        if not self._finished.empty():
            timeout = 0.0
        else:
            timeout = max(0.0, self._next_duty_at() - time.monotonic())
        sockets = [self._wake_read]
        listening = self.listener.fileno()
        if listening is not None:
            sockets.append(listening)
        if timeout > 0:
            select.select(sockets, [], [], timeout)
        self._drain_wake_pipe()

    def _next_duty_at(self) -> float:
        now = time.monotonic()
        duties = [now + MAX_WAIT_S]
        if self.db is None:
            duties.append(self.db_schedule.next_try_at)
        else:
            duties += [self._heartbeat_at, self._recover_at]
            if self.unwritten:
                duties.append(now)
            if not self.stopping and len(self.running) < self.settings.concurrency:
                duties.append(now if self._backlog else self._claim_at)
        if not self.listener.connected:
            duties.append(self.listener.schedule.next_try_at)
        for run in self.running.values():
            if run.deadline is not None and not run.control.stopped:
                duties.append(run.deadline)
            if run.give_up_at is not None and not run.written_early:
                duties.append(run.give_up_at)
        if self.drain_deadline is not None:
            duties.append(self.drain_deadline)
        ping_in = self.notifier.next_ping_in()
        if ping_in is not None:
            duties.append(now + ping_in)
        return min(duties)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is awake already

    def _turn(self) -> None:
        now = time.monotonic()
        self._notice_signals(now)
        self._take_notifications()
        self._take_finished()
        self._watch_runs(now)
        self._reconnect_database(now)
        if self.db is not None:
            try:
                self._flush()
                self._send_progress(now)
                self._renew_leases(now)
                self._recover(now)
                self._claim(now)
            except DatabaseUnavailable as exc:
                self._lose_database(exc)
        self.notifier.ping()
        self.notifier.status(self._status_text())

    # -- notifications -----------------------------------------------------------------

    def _take_notifications(self) -> None:
        if self.listener.connect():
            self._claim_at = 0.0  # catch up on what was announced while not listening
        heard = self.listener.take()
        if heard.wake:
            self._claim_at = 0.0
        for run_id in heard.cancelled_runs:
            run = self.running.get(run_id)
            if run is not None:
                self._stop_run(run, STOP_CANCELLED, "task cancelled, stopping it")

    def _stop_run(self, run: Run, reason: str, message: str) -> None:
        if run.control.stopped:
            return
        run.control.stop(reason)
        level = logging.INFO if reason == STOP_CANCELLED else logging.WARNING
        log.log(level, "%s %s", message, run.context.fields)
        if run.mode == "thread" and reason == STOP_TIMEOUT:
            run.give_up_at = time.monotonic() + run.grace_s

    # -- running tasks -----------------------------------------------------------------

    def _claim(self, now: float) -> None:
        assert self.db is not None
        free = self.settings.concurrency - len(self.running)
        if self.stopping or free <= 0 or not (self._backlog or now >= self._claim_at):
            return
        tasks = self.db.claim(self.worker_id, free, self.settings.lease_s,
                              self.task_names)
        for task in tasks:
            self._start_run(task, now)
        if tasks:
            self.last_claim = time.strftime("%H:%M:%S")
        self._backlog = len(tasks) == free
        if not self._backlog:
            self._claim_at = now + self._idle_wait()

    def _idle_wait(self) -> float:
        """Seconds to wait for the next claim when no task was left to claim."""
        assert self.db is not None
        due_in = self.db.next_due_in(self.task_names)
        if due_in is None:
            return self.settings.poll_interval_s
        return min(self.settings.poll_interval_s, max(RECHECK_S, due_in))

    def _start_run(self, task: ClaimedTask, now: float) -> None:
        handler = self.registry.handlers[task.task_name]
        policy = handler.policy
        context = TaskContext(
            queue=self.settings.queue, task_id=task.task_id, run_id=task.run_id,
            task_name=task.task_name, params=task.params, attempt=task.attempt,
            max_attempts=task.max_attempts, dependency_results=task.dependency_results,
            control=RunControl(self._wake),
        )
        timeout = task.timeout_s or policy.timeout_s
        run = Run(task, context, policy.mode, policy.kill_grace_s, now,
                  now + timeout if timeout else None)
        if task.problem is not None:
            log.error("task not run: %s %s", task.problem, context.fields)
            self.unwritten.append(Unwritten(run, FAIL, failed(
                "UnreadableTask", task.problem, retryable=False), 0.0))
            return
        self.running[task.run_id] = run
        log.info("task started %s", context.fields)
        self.slots.submit(run)

    def _execute(self, run: Run) -> None:
        """In a slot thread: run the handler, hand the outcome to the loop."""
        started = time.monotonic()
        handler = self.registry.handlers[run.task.task_name]
        outcome = execution.execute(handler, run.context, self.settings.log_level)
        self._finished.put((run, outcome, time.monotonic() - started))
        self._wake()

    def _take_finished(self) -> None:
        while not self._finished.empty():
            run, outcome, duration = self._finished.get()
            self.running.pop(run.run_id, None)
            if run.written_early:
                log.warning("late outcome discarded: the run was already failed %s "
                            "duration=%.3fs", run.context.fields, duration)
                continue
            action, outcome = self._settle(run, outcome)
            self.unwritten.append(Unwritten(run, action, outcome, duration))

    def _settle(self, run: Run, outcome: Outcome) -> tuple[str, Outcome]:
        """What to write for a finished run: its own outcome, or its stop reason's."""
        reason = run.control.reason
        if reason == STOP_LOST:
            return DISCARD, outcome
        if reason == STOP_SHUTDOWN:
            return RELEASE, outcome
        if reason == STOP_TIMEOUT:
            timeout = (run.deadline or run.started_at) - run.started_at
            return FAIL, failed("TaskTimeout", f"the task did not finish within its "
                                f"timeout of {timeout:g}s and was stopped")
        if reason == STOP_CANCELLED:
            return FAIL, failed("Cancelled", "the task was cancelled while it ran")
        return (FAIL if outcome.failed else COMPLETE), outcome

    def _watch_runs(self, now: float) -> None:
        """Stop runs past their timeout; give up on threads that ignore the stop."""
        for run in self.running.values():
            if run.deadline is not None and now >= run.deadline:
                self._stop_run(run, STOP_TIMEOUT, "task timed out, stopping it")
            if run.give_up_at is not None and now >= run.give_up_at and (
                    not run.written_early):
                # TODO: the slot stays taken until the thread returns, since Python
                # cannot stop a thread; a worker whose slots all hang needs a restart.
                run.written_early = True
                log.error("handler thread ignores its stop; failing the task without "
                          "a retry, so that no second attempt runs beside it %s",
                          run.context.fields)
                self.unwritten.append(Unwritten(run, FAIL, failed(
                    "TaskTimeout",
                    "the task did not finish within its timeout and its handler "
                    "thread did not stop; not retried, so that two attempts never run "
                    "at once: give this task type mode = process", retryable=False),
                    now - run.started_at))

    # -- writing to the database -------------------------------------------------------

    def _flush(self) -> None:
        """Write every waiting outcome: one round trip per kind."""
        assert self.db is not None
        by_action: dict[str, list[Unwritten]] = {COMPLETE: [], FAIL: [], RELEASE: []}
        for item in self.unwritten:
            if item.action == DISCARD:
                self._log_end(item, "lost")
            else:
                by_action[item.action].append(item)
        self.unwritten = [i for i in self.unwritten if i.action != DISCARD]

        for action, write in ((COMPLETE, self._write_completions),
                              (FAIL, self._write_failures),
                              (RELEASE, self._write_releases)):
            items = by_action[action]
            if items:
                statuses = write(items)
                written = set(map(id, items))
                self.unwritten = [i for i in self.unwritten if id(i) not in written]
                for item, status in zip(items, statuses):
                    self._log_end(item, status)

    def _write_completions(self, items: list[Unwritten]) -> list[str]:
        assert self.db is not None
        batch = [(i.run.run_id, i.outcome.result) for i in items]
        try:
            return self.db.complete_many(batch)
        except InvalidInput:
            return [self._complete_one(item) for item in items]

    def _complete_one(self, item: Unwritten) -> str:
        """Complete one run alone; a result the database refuses fails the task."""
        assert self.db is not None
        try:
            return self.db.complete(item.run.run_id, item.outcome.result)
        except InvalidInput as exc:
            item.outcome = failed("InvalidResult", f"the database refused the "
                                  f"result: {exc}", retryable=False)
            return self.db.fail(item.run.run_id, item.outcome.error or {},
                                retryable=False).status

    def _write_failures(self, items: list[Unwritten]) -> list[str]:
        assert self.db is not None
        results = self.db.fail_many(
            [(i.run.run_id, i.outcome.error or {}, i.outcome.retryable) for i in items])
        return [result.status for result in results]

    def _write_releases(self, items: list[Unwritten]) -> list[str]:
        assert self.db is not None
        return self.db.release([i.run.run_id for i in items])

    def _log_end(self, item: Unwritten, status: str) -> None:
        error = item.outcome.error
        detail = f" error={error['type']}: {error['message']}" if (
            error and status in ("retrying", "failed")) else ""
        level = {"completed": logging.INFO, "released": logging.INFO,
                 "cancelled": logging.INFO, "retrying": logging.WARNING,
                 "failed": logging.ERROR}.get(status, logging.WARNING)
        log.log(level, "task ended %s outcome=%s duration=%.3fs%s",
                item.run.context.fields, status, item.duration_s, detail)

    def _send_progress(self, now: float) -> None:
        assert self.db is not None
        for run in self.running.values():
            message = run.control.progress
            if message is None or message == run.progress_sent:
                continue
            if now - run.progress_sent_at < PROGRESS_EVERY_S:
                continue
            run.progress_sent, run.progress_sent_at = message, now
            self.db.set_progress(run.run_id, message)

    def _renew_leases(self, now: float) -> None:
        assert self.db is not None
        if now < self._heartbeat_at:
            return
        runs = [r for r in self.running.values()
                if r.control.reason != STOP_LOST and not r.written_early]
        runs += [i.run for i in self.unwritten]
        statuses = self.db.heartbeat(self.worker_id, [r.run_id for r in runs],
                                     self.settings.lease_s)
        self._heartbeat_at = now + self.settings.lease_s / 3
        for run_id, status in statuses.items():
            run = self.running.get(run_id)
            if run is None or status == "ok":
                continue
            if status == "cancelled":
                self._stop_run(run, STOP_CANCELLED, "task cancelled, stopping it")
            else:
                self._stop_run(run, STOP_LOST, "lease lost (the task was recovered "
                               "elsewhere), stopping the run")

    def _recover(self, now: float) -> None:
        assert self.db is not None
        if now < self._recover_at:
            return
        recovered = self.db.recover_expired()
        self._recover_at = now + max(1.0, self.settings.lease_s / 2)
        for item in recovered:
            log.warning("recovered an expired lease queue=%s task_id=%d run_id=%d "
                        "outcome=%s", self.settings.queue, item.task_id, item.run_id,
                        item.outcome)
        if recovered:
            self._claim_at = 0.0

    # -- database outages --------------------------------------------------------------

    def _lose_database(self, exc: DatabaseUnavailable) -> None:
        delay = self.db_schedule.failed()
        level = logging.WARNING if self.db_schedule.worth_reporting() else logging.DEBUG
        log.log(level, "database unreachable (%s), %d tasks keep running and %d "
                "outcomes wait; reconnecting in %.1fs queue=%s", exc,
                len(self.running), len(self.unwritten), delay, self.settings.queue)
        if self.db is not None:
            try:
                self.db.close()
            except psycopg.Error:
                pass
        self.db = None

    def _reconnect_database(self, now: float, force: bool = False) -> None:
        # TODO: connect in the loop's thread for simplicity; a database host that
        # drops packets blocks the loop (and the watchdog) for up to connect_timeout.
        if self.db is not None or not (force or self.db_schedule.due(now)):
            return
        try:
            conn = connect(self.settings.dsn, application_name=self.application_name)
            self.db = Client(conn, self.settings.queue)
            self._register()
        except DatabaseUnavailable as exc:
            self._lose_database(exc)
            return
        log.info("database reachable again, writing %d outcomes queue=%s",
                 len(self.unwritten), self.settings.queue)
        self.db_schedule.succeeded()
        self._heartbeat_at = self._recover_at = self._claim_at = 0.0

    # -- systemd -----------------------------------------------------------------------

    def _status_text(self) -> str:
        running = len(self.running)
        free = max(0, self.settings.concurrency - running)
        if self.db is None and self.db_schedule.down_since is not None:
            down_for = time.monotonic() - self.db_schedule.down_since
            return (f"database unreachable for {down_for:.0f}s; running {running} "
                    f"tasks, {len(self.unwritten)} outcomes waiting")
        if self.stopping:
            return f"stopping: draining {running} tasks"
        return (f"running {running} tasks, {free} free slots, "
                f"last claim {self.last_claim}")

