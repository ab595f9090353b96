"""The LISTEN connection: wake-ups when tasks become claimable, and cancel requests.

Every transition that makes a task of the queue claimable sends NOTIFY on channel
``absurd_<queue>``; cancelling a running task sends its run id on ``absurd_cancel``.
The listener has a connection of its own, so that queue operations never wait behind
it. After any loss it reconnects with backoff and LISTENs again; the caller claims
once after each reconnect, to pick up what was announced while nobody listened.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from absurd.database import connect, describe
from absurd.errors import DatabaseUnavailable
from absurd.reconnect import ReconnectSchedule

log = logging.getLogger(__name__)

CANCEL_CHANNEL = "absurd_cancel"


@dataclass
class Heard:
    """What arrived since the last look: whether to claim, and runs to cancel."""

    wake: bool = False
    cancelled_runs: list[int] = field(default_factory=list)


class Listener:
    """One LISTEN connection for a queue, reconnected after any loss."""

    def __init__(self, dsn: str, queue: str, application_name: str) -> None:
        self.dsn = dsn
        self.queue = queue
        self.channel = f"absurd_{queue}"
        self.application_name = application_name
        self.conn: psycopg.Connection | None = None
        self.schedule = ReconnectSchedule()

    def fileno(self) -> int | None:
        return self.conn.fileno() if self.conn is not None else None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self) -> bool:
        """Connect and LISTEN when a try is due; True when newly listening."""
        if self.conn is not None or not self.schedule.due(time.monotonic()):
            return False
        conn = None
        try:
            conn = connect(self.dsn, application_name=self.application_name)
            for channel in (self.channel, CANCEL_CHANNEL):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            if conn is not None:
                conn.close()
            delay = self.schedule.failed()
            loud = self.schedule.worth_reporting()
            log.log(logging.WARNING if loud else logging.DEBUG,
                    "listener cannot connect (%s), retrying in %.1fs queue=%s", exc,
                    delay, self.queue)
            return False
        if self.schedule.down_since is not None:
            log.info("listener reconnected queue=%s", self.queue)
        self.schedule.succeeded()
        self.conn = conn
        return True

    def take(self) -> Heard:
        """Notifications that arrived, without waiting for more."""
        heard = Heard()
        if self.conn is None:
            return heard
        try:
            for notify in self.conn.notifies(timeout=0):
                if notify.channel == CANCEL_CHANNEL and notify.payload.isdigit():
                    heard.cancelled_runs.append(int(notify.payload))
                elif notify.channel != CANCEL_CHANNEL:
                    heard.wake = True
        except psycopg.OperationalError as exc:
            self._lose(exc)
        return heard

    def _lose(self, exc: Exception) -> None:
        delay = self.schedule.failed()
        self.schedule.worth_reporting()
        log.warning("listener lost its connection (%s), reconnecting in %.1fs "
                    "queue=%s", describe(exc), delay, self.queue)
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
            self.conn = None
