"""Checks on task input made before a round trip, mirroring the database's limits.

The stored functions enforce the same rules for every client; checking here first
gives Python callers the error before any connection is used, and catches what
PostgreSQL would report less clearly (NaN, NUL characters, non-object params).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from absurd.errors import InvalidInput

#: Params travel with every claim; bulk data belongs in files (mirrors sql limits).
MAX_PARAMS_BYTES = 1_048_576
MAX_ATTEMPTS = 1000
MAX_TIMEOUT_S = 604_800.0
MAX_DELAY_S = 31_536_000.0
MAX_BACKOFF_S = 604_800.0
MAX_PRIORITY = 1000
MAX_BATCH = 100_000

QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,55}")
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def check_queue_name(queue: str) -> str:
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise InvalidInput(
            f"invalid queue name {queue!r}: use 1-56 characters of a-z, 0-9, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return queue


def check_task_name(task_name: str) -> str:
    if not isinstance(task_name, str) or not TASK_NAME.fullmatch(task_name):
        raise InvalidInput(
            f"invalid task name {task_name!r}: use 1-128 characters of letters, "
            "digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    return task_name


def _find_nul(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{path} (a key)"
            found = _find_nul(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_nul(item, f"{path}[{index}]")
            if found:
                return found
    return None


def encode_json(value: Any, what: str, max_bytes: int = MAX_PARAMS_BYTES) -> str:
    """Encode value as JSON text for PostgreSQL, refusing what jsonb cannot hold."""
    nul_at = _find_nul(value, what)
    if nul_at:
        raise InvalidInput(
            f"invalid {what}: NUL character (\\u0000) at {nul_at}; PostgreSQL cannot "
            "store it in JSON"
        )
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidInput(
            f"invalid {what}: NaN and Infinity are not JSON ({exc})"
        ) from None
    except TypeError as exc:
        raise InvalidInput(f"invalid {what}: not JSON-serialisable ({exc})") from None
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidInput(
            f"invalid {what}: {size} bytes is over the limit of {max_bytes} bytes"
        )
    return text


def check_params(params: Any) -> str:
    """Return params as JSON text, or raise InvalidInput."""
    if not isinstance(params, dict):
        raise InvalidInput(
            f"invalid params: expected a JSON object, got {type(params).__name__}"
        )
    return encode_json(params, "params")


def check_number(
    field: str, value: float | int, low: float, high: float, *, low_open: bool = False
) -> None:
    """Refuse NaN, infinities and values outside [low, high] (or (low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"invalid {field}: expected a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if math.isnan(value) or too_low or value > high:
        bracket = "(" if low_open else "["
        raise InvalidInput(
            f"invalid {field}: {value} is outside the range {bracket}{low}, {high}]"
        )


def check_spawn(
    task_name: str,
    params: Any,
    *,
    priority: int,
    delay_s: float,
    max_attempts: int,
    timeout_s: float | None,
    backoff_base_s: float,
    backoff_max_s: float,
    idempotency_key: str | None,
) -> str:
    """Validate one task's spawn arguments; return its params as JSON text."""
    check_task_name(task_name)
    text = check_params(params)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidInput(f"invalid priority: expected an integer, got {priority!r}")
    check_number("priority", priority, -MAX_PRIORITY, MAX_PRIORITY)
    check_number("delay_s", delay_s, 0, MAX_DELAY_S)
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool):
        raise InvalidInput(
            f"invalid max_attempts: expected an integer, got {max_attempts!r}"
        )
    check_number("max_attempts", max_attempts, 1, MAX_ATTEMPTS)
    if timeout_s is not None:
        check_number("timeout_s", timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    check_number("backoff_base_s", backoff_base_s, 0, MAX_BACKOFF_S, low_open=True)
    check_number("backoff_max_s", backoff_max_s, backoff_base_s, MAX_BACKOFF_S)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise InvalidInput("invalid idempotency_key: use 1 to 200 characters")
    if idempotency_key is not None and "\x00" in idempotency_key:
        raise InvalidInput("invalid idempotency_key: NUL character")
    return text
