"""When to try a lost connection again: exponential backoff with jitter, never blocking.

The worker loop keeps running while the database is away (its tasks go on, the
watchdog is fed), so a reconnect is an appointment the loop keeps, not a sleep.
"""

from __future__ import annotations

import time

from absurd.database import backoff_delays

#: While a connection stays down, a failed try is worth a warning this often; the
#: tries between are logged at DEBUG, so that a long outage does not flood the log.
REPORT_EVERY_S = 30.0


class ReconnectSchedule:
    """The next time to try a connection again, backing off after each failure."""

    def __init__(self) -> None:
        self._delays = backoff_delays()
        self.next_try_at = 0.0
        self.down_since: float | None = None
        self._reported_at: float | None = None

    def failed(self) -> float:
        """Note a failure; return the seconds until the next try."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        delay = next(self._delays)
        self.next_try_at = now + delay
        return delay

    def worth_reporting(self) -> bool:
        """True for the first failure of an outage, then every REPORT_EVERY_S."""
        now = time.monotonic()
        if self._reported_at is None or now - self._reported_at >= REPORT_EVERY_S:
            self._reported_at = now
            return True
        return False

    def succeeded(self) -> None:
        self._delays = backoff_delays()
        self.next_try_at = 0.0
        self.down_since = None
        self._reported_at = None

    def due(self, now: float) -> bool:
        return now >= self.next_try_at
