"""The errors of the absurd core: one base class, one subclass per kind of failure.

Each error's message says what was wrong and what to do about it, in one sentence.
"""

from __future__ import annotations


class AbsurdError(Exception):
    """Something in absurd went wrong."""


class ConfigError(AbsurdError):
    """The configuration is invalid: fix the named setting."""


class InvalidInput(AbsurdError):
    """The input was refused and nothing was written: correct it and try again."""


class NotFound(AbsurdError):
    """No such task."""


class DatabaseUnavailable(AbsurdError):
    """The database cannot be reached: check that it runs and that the DSN is right."""


class SchemaMismatch(AbsurdError):
    """The database schema is not the one this version of absurd expects."""
