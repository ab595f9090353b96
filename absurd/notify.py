"""systemd notifications: READY=1, WATCHDOG=1, STATUS= and STOPPING=1.

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing. The watchdog is fed
by the caller's main loop at half of $WATCHDOG_USEC, so that a loop that hangs is
killed by systemd while a handler that merely runs long is not.
"""

from __future__ import annotations

import logging
import os
import time

import sdnotify

log = logging.getLogger(__name__)

#: STATUS= is sent when its text changes, and at least this often otherwise.
STATUS_REFRESH_S = 10.0
#: Unchanged STATUS= text is not sent more often than this, in seconds.
STATUS_MIN_INTERVAL_S = 1.0


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd set for this process, or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """Messages to systemd about this service's state."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._systemd = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_every_s = watchdog_interval_s() if self.enabled else None
        self._next_ping_at = 0.0
        self._status = ""
        self._status_sent_at = 0.0

    def _send(self, message: str) -> None:
        if self._systemd is not None:
            self._systemd.notify(message)

    def ready(self, status: str) -> None:
        self._status, self._status_sent_at = status, time.monotonic()
        self._send(f"READY=1\nSTATUS={status}")

    def stopping(self, status: str) -> None:
        self._status, self._status_sent_at = status, time.monotonic()
        self._send(f"STOPPING=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        """Publish text when it changed (at most once a second) or grew stale."""
        now = time.monotonic()
        age = now - self._status_sent_at
        if age < STATUS_MIN_INTERVAL_S:
            return
        if text == self._status and age < STATUS_REFRESH_S:
            return
        self._status, self._status_sent_at = text, now
        self._send(f"STATUS={text}")

    def ping(self) -> None:
        """Feed the watchdog when it is due; call this from the main loop only."""
        if self.watchdog_every_s is None:
            return
        now = time.monotonic()
        if now >= self._next_ping_at:
            self._next_ping_at = now + self.watchdog_every_s
            self._send("WATCHDOG=1")

    def next_ping_in(self) -> float | None:
        if self.watchdog_every_s is None:
            return None
        return max(0.0, self._next_ping_at - time.monotonic())
