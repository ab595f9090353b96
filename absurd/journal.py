"""Log output for people and for journald.

Logs go to stdout. Under journald ($JOURNAL_STREAM set) each line starts with the
syslog priority in angle brackets (``<4>`` for a warning) and carries no timestamp,
since the journal adds its own; elsewhere lines carry a timestamp and the level.
Messages carry their fields as ``key=value`` pairs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``: priority prefix for journald, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Continuation lines (tracebacks) keep the priority of their record.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every logger's records to stdout (or stream) in the format that fits."""
    handler = logging.StreamHandler(stream or sys.stdout)
    if under_journald():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
