"""Configuration shared by every script: one file, environment variables, flags.

Each setting has one name used everywhere: ``state-dir`` (or ``state_dir``) in
/etc/absurd/absurd.conf, ``ABSURD_STATE_DIR`` in the environment, ``--state-dir`` on
the command line. Later sources win:
the file, then the environment, then flags. A script adds its own settings to the
parser this module builds; keys that a script does not know are ignored in the file,
so that one absurd.conf serves every script.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import configargparse

DEFAULT_CONFIG_FILE = "/etc/absurd/absurd.conf"
ENV_PREFIX = "ABSURD_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def default_state_dir() -> Path:
    """Where the embedded database lives when no dsn is configured.

    systemd's $STATE_DIRECTORY when set, /var/lib/absurd for root, otherwise the
    user's XDG state directory.
    """
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/absurd")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "absurd"


class ConfigFile(configargparse.DefaultConfigFileParser):
    """``key = value`` lines, where a key may be spelt with ``_`` or ``-``.

    The environment spells settings with underscores (ABSURD_STATE_DIR), flags with
    dashes (--state-dir); the file takes either, so that neither spelling is silently
    ignored.
    """

    def parse(self, stream: Iterable[str]) -> dict[str, Any]:
        items = super().parse(stream)
        return {key.replace("_", "-"): value for key, value in items.items()}


def parser(description: str, config_files: Sequence[str] = ()) -> configargparse.ArgParser:
    """A parser with the settings every script shares."""
    result = configargparse.ArgParser(
        description=description,
        default_config_files=[DEFAULT_CONFIG_FILE, *config_files],
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="extra config file, read after " + DEFAULT_CONFIG_FILE,
        auto_env_var_prefix=ENV_PREFIX,
        ignore_unknown_config_file_keys=True,
        config_file_parser_class=ConfigFile,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    result.add_argument(
        "--dsn",
        help="libpq connection string; unset: the embedded PostgreSQL under state-dir "
        "(put passwords in ~/.pgpass, not here)",
    )
    result.add_argument("--queue", default="default", help="queue to work on")
    result.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="folder of the embedded PostgreSQL",
    )
    result.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
        help="lowest level logged",
    )
    return result


def positive_float(text: str) -> float:
    """argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value
