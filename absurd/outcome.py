"""The outcome of one run: a result that completes the task, or an error that fails it.

Whatever a handler hands back is made safe to store here: a result must be JSON the
database accepts, and every text of an error (type, message, traceback, the tail of a
command's stderr) loses its NUL characters and invalid code points and is cut to a
bounded length, so that a handler's bad output can never keep its task from ending.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from typing import Any

from absurd import validation
from absurd.errors import InvalidInput

#: Mirrors the max_result_bytes limit of the schema: results travel to dependents.
MAX_RESULT_BYTES = 1_048_576
#: Bounds on error texts, so that a failing task cannot fill the tasks table.
MAX_MESSAGE_CHARS = 4_000
MAX_TRACEBACK_CHARS = 16_000
MAX_TAIL_CHARS = 4_000
#: Half a UTF-16 pair, as decoding with surrogateescape leaves: not valid text.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Outcome:
    """A result to complete the run with, or an error to fail it with."""

    result: Any = None
    error: dict[str, Any] | None = None
    retryable: bool = True

    @property
    def failed(self) -> bool:
        return self.error is not None


def clean_text(text: Any, limit: int, *, keep_tail: bool = False) -> str:
    """Text the database can store: no NUL, no lone surrogates, at most limit chars."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = LONE_SURROGATE.sub("\ufffd", str(text).replace("\x00", ""))
    if len(text) <= limit:
        return text
    if keep_tail:
        return "..." + text[-(limit - 3):]
    return text[: limit - 3] + "..."


def completed(result: Any) -> Outcome:
    """Complete with result, or fail for good when the result cannot be stored."""
    try:
        validation.encode_json(result, "result", MAX_RESULT_BYTES)
    except InvalidInput as exc:
        return failed("InvalidResult", f"the handler returned {exc}", retryable=False)
    return Outcome(result=result)


def failed(type_name: str, message: str, *, retryable: bool = True,
           **details: Any) -> Outcome:
    """A failure of the given type; details are extra fields of the stored error."""
    error: dict[str, Any] = {
        "type": clean_text(type_name, 200),
        "message": clean_text(message, MAX_MESSAGE_CHARS),
    }
    for key, value in details.items():
        error[key] = clean_text(value, MAX_TAIL_CHARS, keep_tail=True) if isinstance(
            value, (str, bytes)) else value
    return Outcome(error=error, retryable=retryable)


def from_exception(exc: BaseException, *, retryable: bool = True) -> Outcome:
    """A failure describing exc: its type, message and traceback."""
    text = "".join(traceback.format_exception(exc))
    return Outcome(
        error={
            "type": clean_text(type(exc).__qualname__, 200),
            "message": clean_text(str(exc), MAX_MESSAGE_CHARS),
            "traceback": clean_text(text, MAX_TRACEBACK_CHARS, keep_tail=True),
        },
        retryable=retryable,
    )
