"""Task handlers the worker tests route to: each one a behaviour a test needs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from absurd.context import PermanentFailure, TaskContext


def noop(params: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return {"params": params, "attempt": ctx.attempt, "task_id": ctx.task_id,
            "dependencies": {str(k): v for k, v in ctx.dependency_results.items()}}


async def async_echo(params: dict[str, Any]) -> dict[str, Any]:
    return {"async": True, "params": params}


def _mark(params: dict[str, Any], ctx: TaskContext, what: str) -> None:
    """Leave a file saying which attempt reached which point, in which process."""
    folder = params.get("marks")
    if folder:
        path = Path(folder) / f"{ctx.task_id}-{ctx.attempt}-{what}"
        path.write_text(str(os.getpid()))


def sleep(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Sleep, stopping early when told to (the cooperative handler)."""
    _mark(params, ctx, "started")
    ctx.set_progress("sleeping")
    ctx.sleep(float(params["seconds"]))
    _mark(params, ctx, "finished")
    return {"slept": params["seconds"], "attempt": ctx.attempt}


def sleep_ignoring_stop(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Sleep and return, whatever the worker says meanwhile."""
    _mark(params, ctx, "started")
    time.sleep(float(params["seconds"]))
    _mark(params, ctx, "finished")
    return {"slept": params["seconds"], "attempt": ctx.attempt}


def hang_until_attempt(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Hang (for the test to kill the worker) until the given attempt, then finish."""
    _mark(params, ctx, "started")
    if ctx.attempt < int(params["finish_on_attempt"]):
        time.sleep(3600)
    return {"finished_on_attempt": ctx.attempt}


def fail(params: dict[str, Any]) -> None:
    if params.get("garbage"):  # what no params can carry: NUL, a lone surrogate
        raise ValueError("bad\x00input \udcff here")
    raise ValueError(params.get("message", "boom"))


def permanent(params: dict[str, Any]) -> None:
    raise PermanentFailure(params.get("message", "this input can never work"))


def fail_once(params: dict[str, Any]) -> dict[str, Any]:
    """Fail for good the first time, succeed once the marker file exists."""
    marker = Path(params["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise PermanentFailure("first run fails")
    return {"second": True}


def bad_result(params: dict[str, Any]) -> Any:
    return {"not json": object()} if params.get("kind") == "object" else float("nan")


def hold_gil(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """On the first attempt hold the GIL for about params.seconds in one C call."""
    _mark(params, ctx, "started")
    if ctx.attempt == 1:
        started = time.perf_counter()
        sum(range(2_000_000))
        per_item = (time.perf_counter() - started) / 2_000_000
        sum(range(int(float(params["seconds"]) / per_item)))
    _mark(params, ctx, "finished")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def report_pid(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    ctx.set_progress("in a child")
    return {"pid": os.getpid(), "attempt": ctx.attempt}
