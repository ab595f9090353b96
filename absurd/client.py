"""The typed client API: every queue operation, one stored-function call each.

A Client wraps one autocommit connection and one queue. Each method is one round
trip and one transaction in the database, where the rules live (sql/). Methods that
act on a claimed task take its run id, and say 'stale' when the run is no longer
current: its worker was fenced out and nothing was written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from absurd import validation
from absurd.database import connect
from absurd.errors import DatabaseUnavailable, InvalidInput, NotFound

TERMINAL_STATES = ("completed", "failed", "cancelled")
TASK_STATES = ("waiting", "pending", "running", *TERMINAL_STATES)

#: Defaults for a spawned task (mirrored by the stored function's defaults).
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE_S = validation.DEFAULT_BACKOFF_BASE_S
DEFAULT_BACKOFF_MAX_S = validation.DEFAULT_BACKOFF_MAX_S
#: Consecutive lease expiries after which a task is quarantined.
DEFAULT_QUARANTINE_AFTER = 5


@dataclass(frozen=True)
class TaskSpec:
    """One task to spawn."""

    task_name: str
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    delay_s: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float | None = None
    idempotency_key: str | None = None
    depends_on: Sequence[int] = ()
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S

    def encoded(self) -> str:
        """The spec as the JSON object spawn_many() takes, after every check.

        Only fields that differ from the defaults are checked and written: a batch of
        ten thousand tasks is then a fraction of the work for both sides.
        """
        validation.check_task_name(self.task_name)
        params = validation.check_params(self.params)
        options = {}
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value != SPEC_DEFAULTS[name]:
                options[name] = value
        validation.check_options(options)

        fields = [f'"task_name":"{self.task_name}"', f'"params":{params}']
        fields.extend(f'"{name}":{json.dumps(value)}' for name, value in options.items())
        if self.depends_on:
            depends_on = validation.check_depends_on(self.depends_on)
            fields.append(f'"depends_on":{json.dumps(depends_on)}')
        return "{" + ",".join(fields) + "}"


OPTIONAL_FIELDS = (
    "priority", "delay_s", "max_attempts", "timeout_s", "idempotency_key",
    "backoff_base_s", "backoff_max_s",
)
SPEC_DEFAULTS = {name: TaskSpec.__dataclass_fields__[name].default
                 for name in OPTIONAL_FIELDS}


@dataclass(frozen=True)
class Spawned:
    task_id: int
    created: bool


@dataclass(frozen=True)
class ClaimedTask:
    run_id: int
    task_id: int
    task_name: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_s: float | None
    lease_expires_at: datetime
    dependency_results: dict[str, Any]
    #: Why the task's input could not be read (another client stored JSON that
    #: Python cannot decode); the worker fails such a task instead of running it.
    problem: str | None = None


def _claimed(row: tuple) -> ClaimedTask:
    """A claimed task from its row, whose params and results arrive as JSON text.

    Decoding here, one task at a time, keeps one unreadable task from hiding the
    others claimed with it.
    """
    run_id, task_id, task_name, params, attempt, max_attempts, timeout_s, lease, deps = row
    try:
        decoded_params, decoded_deps = json.loads(params), json.loads(deps)
        problem = None
    except (ValueError, RecursionError) as exc:
        decoded_params, decoded_deps = {}, {}
        problem = f"the task's params or dependency results cannot be decoded: {exc}"
    return ClaimedTask(run_id, task_id, task_name, decoded_params, attempt,
                       max_attempts, timeout_s, lease, decoded_deps, problem)


@dataclass(frozen=True)
class FailOutcome:
    run_id: int
    status: str
    retry_at: datetime | None


@dataclass(frozen=True)
class Recovered:
    run_id: int
    task_id: int
    outcome: str


@dataclass(frozen=True)
class QueueStats:
    queue: str
    waiting: int
    pending: int
    due: int
    running: int
    completed: int
    failed: int
    cancelled: int
    oldest_due_age_s: float | None
    last_completed_at: datetime | None
    live_workers: int


def _raise_clear(exc: psycopg.Error) -> None:
    """Map PostgreSQL errors onto the absurd hierarchy, keeping the server's words."""
    message = exc.diag.message_primary or str(exc)
    if isinstance(exc, pg_errors.NoDataFound):
        raise NotFound(message) from None
    if isinstance(
        exc,
        (
            pg_errors.InvalidParameterValue,
            pg_errors.UntranslatableCharacter,
            pg_errors.InvalidTextRepresentation,
            pg_errors.NumericValueOutOfRange,
            pg_errors.CharacterNotInRepertoire,
        ),
    ):
        raise InvalidInput(message) from None
    if isinstance(exc, psycopg.OperationalError):
        raise DatabaseUnavailable(f"lost the database: {message}") from None
    raise exc


def _decoded_or_text(text: str | None) -> Any:
    """JSON text decoded; left as text when Python cannot decode it (another client
    may store numbers of more than 4300 digits or deeper nesting than Python reads)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


class Client:
    """Queue operations for one queue over one connection."""

    def __init__(self, conn: psycopg.Connection, queue: str) -> None:
        self.conn = conn
        self.queue = validation.check_queue_name(queue)

    @classmethod
    def connect(cls, dsn: str, queue: str, application_name: str = "absurd") -> Client:
        return cls(connect(dsn, application_name=application_name), queue)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            _raise_clear(exc)
            raise  # unreachable: _raise_clear always raises

    def _dict_rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            with self.conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            _raise_clear(exc)
            raise

    # -- spawn ---------------------------------------------------------------------

    def spawn(self, task_name: str, params: dict[str, Any] | None = None,
              **options: Any) -> Spawned:
        """Spawn one task. Options are the fields of TaskSpec."""
        return self.spawn_many([TaskSpec(task_name, params or {}, **options)])[0]

    def spawn_many(self, specs: Iterable[TaskSpec]) -> list[Spawned]:
        """Spawn many tasks in one round trip; all are written or none is."""
        batch = [spec.encoded() for spec in specs]
        if not batch:
            return []
        if len(batch) > validation.MAX_BATCH:
            raise InvalidInput(
                f"invalid batch: {len(batch)} tasks is over the limit of "
                f"{validation.MAX_BATCH} per call; split it"
            )
        rows = self._rows(
            "SELECT task_id, created FROM absurd.spawn_many(%s, %s::jsonb)",
            (self.queue, "[" + ",".join(batch) + "]"),
        )
        return [Spawned(task_id, created) for task_id, created in rows]

    # -- claims and runs -------------------------------------------------------------

    def claim(
        self,
        worker_id: uuid.UUID,
        limit: int,
        lease_s: float,
        task_names: Sequence[str] | None = None,
    ) -> list[ClaimedTask]:
        """Claim up to limit due tasks; task_names None means every name."""
        rows = self._rows(
            "SELECT run_id, task_id, task_name, params::text, attempt, max_attempts, "
            "timeout_s, lease_expires_at, dependency_results::text "
            "FROM absurd.claim(%s, %s, %s, %s, %s)",
            (self.queue, worker_id, None if task_names is None else list(task_names),
             limit, lease_s),
        )
        return [_claimed(row) for row in rows]

    def heartbeat(
        self, worker_id: uuid.UUID, run_ids: Sequence[int], lease_s: float
    ) -> dict[int, str]:
        """Renew leases; map each run id to 'ok', 'cancelled' or 'lost'."""
        rows = self._rows(
            "SELECT run_id, status FROM absurd.heartbeat(%s, %s, %s)",
            (worker_id, list(run_ids), lease_s),
        )
        return dict(rows)

    def set_progress(self, run_id: int, message: str) -> bool:
        message = message.replace("\x00", "")
        return bool(self._rows("SELECT absurd.set_progress(%s, %s)",
                               (run_id, message))[0][0])

    def complete(self, run_id: int, result: Any = None) -> str:
        return self.complete_many([(run_id, result)])[0]

    def complete_many(self, outcomes: Sequence[tuple[int, Any]]) -> list[str]:
        """Complete runs with their results; one status per run, in order."""
        if not outcomes:
            return []
        results = [validation.encode_json(result, "result") for _, result in outcomes]
        rows = self._rows(
            "SELECT status FROM absurd.complete_many(%s, %s::text[]::jsonb[])",
            ([run_id for run_id, _ in outcomes], results),
        )
        return [status for (status,) in rows]

    def fail(self, run_id: int, error: dict[str, Any], retryable: bool = True
             ) -> FailOutcome:
        return self.fail_many([(run_id, error, retryable)])[0]

    def fail_many(
        self, failures: Sequence[tuple[int, dict[str, Any], bool]]
    ) -> list[FailOutcome]:
        if not failures:
            return []
        errors = [validation.encode_json(error, "error") for _, error, _ in failures]
        rows = self._rows(
            "SELECT run_id, status, retry_at "
            "FROM absurd.fail_many(%s, %s::text[]::jsonb[], %s)",
            ([f[0] for f in failures], errors, [f[2] for f in failures]),
        )
        return [FailOutcome(*row) for row in rows]

    def release(self, run_ids: Sequence[int]) -> list[str]:
        """Give claimed tasks back unchanged: pending at once, no attempt charged."""
        if not run_ids:
            return []
        rows = self._rows("SELECT status FROM absurd.release_many(%s)", (list(run_ids),))
        return [status for (status,) in rows]

    def recover_expired(
        self, quarantine_after: int = DEFAULT_QUARANTINE_AFTER, all_queues: bool = False
    ) -> list[Recovered]:
        rows = self._rows(
            "SELECT * FROM absurd.recover_expired(%s, %s)",
            (None if all_queues else self.queue, quarantine_after),
        )
        return [Recovered(*row) for row in rows]

    def next_due_in(self, task_names: Sequence[str] | None = None) -> float | None:
        """Seconds until the earliest pending task (of these names) is due.

        None when none is pending.
        """
        return self._rows(
            "SELECT absurd.next_due_in(%s, %s)",
            (self.queue, None if task_names is None else list(task_names)),
        )[0][0]

    # -- workers ---------------------------------------------------------------------

    def register_worker(
        self,
        worker_id: uuid.UUID,
        *,
        hostname: str,
        pid: int,
        instance: str | None,
        concurrency: int,
        task_names: Sequence[str],
        lease_s: float = 30.0,
    ) -> None:
        self._rows(
            "SELECT absurd.register_worker(%s, %s, %s, %s, %s, %s, %s, %s)",
            (worker_id, self.queue, hostname, pid, instance, concurrency,
             list(task_names), lease_s),
        )

    def deregister_worker(self, worker_id: uuid.UUID) -> None:
        self._rows("SELECT absurd.deregister_worker(%s)", (worker_id,))

    # -- operators -------------------------------------------------------------------

    def cancel(self, task_id: int) -> str:
        """Cancel a task; return the state it was in."""
        return self._rows("SELECT absurd.cancel(%s)", (task_id,))[0][0]

    def retry(self, task_id: int) -> str:
        """Retry a failed or cancelled task; return the state it was in."""
        return self._rows("SELECT absurd.retry(%s)", (task_id,))[0][0]

    def stats(self) -> QueueStats:
        row = self._rows("SELECT * FROM absurd.queue_stats(%s)", (self.queue,))[0]
        return QueueStats(*row)

    def list_tasks(
        self,
        state: str | None = None,
        task_name: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The newest tasks of the queue, optionally of one state and task name."""
        if state is not None and state not in TASK_STATES:
            raise InvalidInput(
                f"invalid state {state!r}: use one of {', '.join(TASK_STATES)}"
            )
        validation.check_number("limit", limit, 1, 100_000)
        return self._dict_rows(
            "SELECT task_id, task_name, state, priority, attempts, max_attempts, "
            "created_at, available_at, finished_at, progress "
            "FROM absurd.tasks WHERE queue = %s "
            "AND (%s::text IS NULL OR state = %s) "
            "AND (%s::text IS NULL OR task_name = %s) "
            "ORDER BY task_id DESC LIMIT %s",
            (self.queue, state, state, task_name, task_name, limit),
        )

    def show(self, task_id: int) -> dict[str, Any]:
        """One task, whatever its queue, with every run; raises NotFound."""
        tasks = self._dict_rows(
            "SELECT task_id, queue, task_name, params::text, priority, state, "
            "available_at, max_attempts, attempts, backoff_base_s, backoff_max_s, "
            "timeout_s, idempotency_key, depends_on, current_run_id, expired_in_row, "
            "result::text, error::text, progress, created_at, updated_at, finished_at "
            "FROM absurd.tasks WHERE task_id = %s",
            (task_id,),
        )
        if not tasks:
            raise NotFound(f"task {task_id} does not exist")
        task = tasks[0]
        for column in ("params", "result", "error"):
            task[column] = _decoded_or_text(task[column])
        task["runs"] = self._dict_rows(
            "SELECT run_id, attempt, worker_id, state, claimed_at, lease_expires_at, "
            "finished_at, error FROM absurd.runs WHERE task_id = %s ORDER BY run_id",
            (task_id,),
        )
        # Attempts that ended in a failure or an expired lease, across explicit
        # retries too: each was followed, or may be, by another attempt.
        task["retry_count"] = sum(
            run["state"] in ("failed", "expired") for run in task["runs"]
        )
        return task
