"""Checks on task input made before a round trip, mirroring the database's limits.

The stored functions enforce the same rules for every client; checking here first
gives Python callers the error before any connection is used, and catches what
PostgreSQL would report less clearly (NaN, NUL characters, non-object params).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
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
MAX_LEASE_S = 86_400.0
MAX_TASK_ID = 2**63 - 1
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_MAX_S = 3600.0

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


# A JSON-escaped NUL (\u0000) that is not itself an escaped backslash followed by
# "u0000": an odd number of backslashes before the "u".
ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _find_nul(value: Any, path: str) -> str | None:
    """Where in value a NUL character sits, for the error message."""
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
    """Encode value as JSON text for PostgreSQL, refusing what jsonb cannot hold.

    The size counted is that of the text PostgreSQL writes out for the value (UTF-8,
    a space after each comma and colon), which is what the database limits.
    """
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        reason = str(exc).split(";")[0]
        raise InvalidInput(
            f"invalid {what}: {reason} (NaN, Infinity and out-of-range numbers are not "
            "JSON)"
        ) from None
    except TypeError as exc:
        raise InvalidInput(f"invalid {what}: not JSON-serialisable ({exc})") from None
    except RecursionError:
        raise InvalidInput(f"invalid {what}: nested too deeply") from None
    if ESCAPED_NUL.search(text):
        raise InvalidInput(
            f"invalid {what}: NUL character (\\u0000) at {_find_nul(value, what)}; "
            "PostgreSQL cannot store it in JSON"
        )
    if "\\ud" in text or len(text) * 2 > max_bytes:
        _check_as_postgresql_writes_it(value, what, max_bytes)
    return text


def _check_as_postgresql_writes_it(value: Any, what: str, max_bytes: int) -> None:
    """Refuse lone surrogates, and measure the size the database will measure.

    Only called when the compact text hints at either: PostgreSQL's form is at most
    twice as long as the compact one.
    """
    try:
        written = json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidInput(
            f"invalid {what}: a text holds a lone surrogate (half of a UTF-16 pair), "
            "which is not valid Unicode"
        ) from None
    if len(written) > max_bytes:
        raise InvalidInput(
            f"invalid {what}: {len(written)} bytes is over the limit of {max_bytes} "
            "bytes"
        )


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


def check_integer(field: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"invalid {field}: expected an integer, got {value!r}")
    check_number(field, value, low, high)


def check_depends_on(depends_on: Any) -> list[int]:
    """Task ids as a list of integers, or InvalidInput: never coerced."""
    if isinstance(depends_on, (str, bytes)) or not isinstance(depends_on, (list, tuple)):
        raise InvalidInput(
            f"invalid depends_on: expected a list of task ids, got {depends_on!r}"
        )
    for task_id in depends_on:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not (
            1 <= task_id <= MAX_TASK_ID
        ):
            raise InvalidInput(f"invalid depends_on: {task_id!r} is not a task id")
    return list(depends_on)


def check_idempotency_key(key: Any) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise InvalidInput("invalid idempotency_key: use a text of 1 to 200 characters")
    if "\x00" in key:
        raise InvalidInput("invalid idempotency_key: NUL character")


OPTION_CHECKS: dict[str, Callable[[Any], object]] = {
    "priority": lambda v: check_integer("priority", v, -MAX_PRIORITY, MAX_PRIORITY),
    "delay_s": lambda v: check_number("delay_s", v, 0, MAX_DELAY_S),
    "max_attempts": lambda v: check_integer("max_attempts", v, 1, MAX_ATTEMPTS),
    "timeout_s": lambda v: v is None
    or check_number("timeout_s", v, 0, MAX_TIMEOUT_S, low_open=True),
    "idempotency_key": lambda v: v is None or check_idempotency_key(v),
    "backoff_base_s": lambda v: check_number(
        "backoff_base_s", v, 0, MAX_BACKOFF_S, low_open=True
    ),
}


def check_options(options: dict[str, Any]) -> None:
    """Check spawn options given by name; options left out take valid defaults."""
    for name, value in options.items():
        check = OPTION_CHECKS.get(name)
        if check is not None:
            check(value)
    if "backoff_base_s" in options or "backoff_max_s" in options:
        base = options.get("backoff_base_s", DEFAULT_BACKOFF_BASE_S)
        cap = options.get("backoff_max_s", DEFAULT_BACKOFF_MAX_S)
        check_number("backoff_max_s", cap, base, MAX_BACKOFF_S)
