"""Handlers the benchmark's worker processes run: no-op, time stamp and sleep.

scripts/benchmark_absurd.py writes a task registry that maps its task names to these
functions and starts real workers with it, so that what it measures is the queue and
the worker, not the work.
"""

from __future__ import annotations

import time
from typing import Any

from absurd.context import TaskContext

#: A sleep task sleeps at most this long, whatever its params say.
MAX_SLEEP_S = 60.0


def noop(params: dict[str, Any], ctx: TaskContext) -> None:
    """Do nothing: the cost of a task is then the queue's and the worker's alone."""
    return None


def stamp(params: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Return when the handler started, on this host's clock (time.time())."""
    return {"handler_started": time.time()}


def sleep(params: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sleep params["seconds"], stopping early when the run is told to stop."""
    started = time.time()
    seconds = min(MAX_SLEEP_S, max(0.0, float(params.get("seconds", 0.1))))
    ctx.sleep(seconds)
    return {"handler_started": started}
