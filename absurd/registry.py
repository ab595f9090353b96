"""The task registry (pipeline adapter): which handler runs each task name, and how.

The registry is an INI file, one section per task name::

    [imaging]
    handler = dsa110_contimg.absurd.adapter:execute_imaging
    mode = process
    timeout = 7200

A section names either ``handler = module:function`` (a Python callable, run in a
worker thread with ``mode = thread`` or in a child process with ``mode = process``) or
``command = tool --in {ms} --out {out}`` (a program run as a child process, its
arguments split like a shell would split them and each ``{param}`` replaced by that
param's value; no shell ever runs). The other keys are the task type's policy:
timeout, max_attempts, backoff_base, backoff_max (defaults for tasks spawned of this
name), kill_grace (seconds between SIGTERM and SIGKILL of a child process) and
non_retryable_exit_codes. A [DEFAULT] section sets keys for every task name.

Reading policies never imports a handler, so that the spawn side can use them; loading
the handlers is a separate step that reports each one it cannot load.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from absurd import validation
from absurd.errors import ConfigError, InvalidInput

log = logging.getLogger(__name__)

DEFAULT_TASKS_CONFIG = Path("/etc/absurd/tasks.conf")
MODES = ("thread", "process")
KEYS = frozenset({
    "handler", "command", "mode", "timeout", "max_attempts", "backoff_base",
    "backoff_max", "kill_grace", "non_retryable_exit_codes",
})
#: Seconds a child gets between SIGTERM and SIGKILL unless its task type says.
DEFAULT_KILL_GRACE_S = 10.0
#: Seconds the startup check of process-mode handlers may take (imports can be slow).
CHECK_TIMEOUT_S = 120.0

#: ``{name}`` in a command argument is replaced by the param of that name;
#: ``{{`` and ``}}`` stand for literal braces.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")



def default_routing() -> str:
    """The shipped routing of the nine DSA-110 stages: etc/tasks.conf.

    Used when no /etc/absurd/tasks.conf exists. The science stages run the
    pipeline's own functions in child processes (CASA and WSClean are neither
    thread-safe nor interruptible); organize-files is ours. Installed, the file
    travels inside the package as absurd.etc.
    """
    source_tree = Path(__file__).resolve().parent.parent / "etc" / "tasks.conf"
    if source_tree.is_file():
        return source_tree.read_text()
    return resources.files("absurd.etc").joinpath("tasks.conf").read_text()


@dataclass(frozen=True)
class TaskPolicy:
    """How tasks of one name run, and the defaults they are spawned with."""

    task_name: str
    handler: str | None = None
    command: tuple[str, ...] | None = None
    mode: str = "thread"
    timeout_s: float | None = None
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 3600.0
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    non_retryable_exit_codes: frozenset[int] = field(default_factory=frozenset)

    @property
    def target(self) -> str:
        """The handler reference or the command template, for logs and errors."""
        return self.handler or shlex.join(self.command or ())

    def spawn_options(self) -> dict[str, Any]:
        """Defaults for a task of this name: keyword arguments of client.TaskSpec."""
        return {
            "max_attempts": self.max_attempts,
            "timeout_s": self.timeout_s,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
        }


@dataclass(frozen=True)
class Handler:
    """A task name's loaded handler: a callable for thread mode, else a reference."""

    policy: TaskPolicy
    function: Callable[..., Any] | None = None
    takes_context: bool = True


@dataclass(frozen=True)
class Registry:
    """The handlers a worker can run, and why the others could not be loaded."""

    handlers: dict[str, Handler]
    problems: dict[str, str]

    @property
    def task_names(self) -> list[str]:
        return sorted(self.handlers)


# -- policies -------------------------------------------------------------------------


def _number(section: configparser.SectionProxy, key: str, low: float, high: float,
            *, low_open: bool = False, default: float | None) -> Any:
    """The number under key, checked against its range; default when unset."""
    text = section.get(key, "").strip()
    if not text:
        return default
    try:
        value = float(text)
        validation.check_number(key, value, low, high, low_open=low_open)
    except (ValueError, InvalidInput):
        bracket = "(" if low_open else "["
        raise ConfigError(
            f"task {section.name!r}: {key} = {text!r} is not a number in "
            f"{bracket}{low:g}, {high:g}]; fix it in the tasks config"
        ) from None
    return value


def _whole(section: configparser.SectionProxy, key: str, low: int, high: int,
           default: int) -> int:
    value = _number(section, key, low, high, default=default)
    if value != int(value):
        raise ConfigError(f"task {section.name!r}: {key} must be a whole number")
    return int(value)


def _exit_codes(section: configparser.SectionProxy) -> frozenset[int]:
    text = section.get("non_retryable_exit_codes", "").replace(",", " ")
    try:
        codes = frozenset(int(word) for word in text.split())
    except ValueError:
        raise ConfigError(
            f"task {section.name!r}: non_retryable_exit_codes = {text!r} must be "
            "whole numbers separated by spaces"
        ) from None
    if any(not 1 <= code <= 255 for code in codes):
        raise ConfigError(
            f"task {section.name!r}: non_retryable_exit_codes must lie in 1 to 255"
        )
    return codes


def _command(section: configparser.SectionProxy) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(section["command"]))
    except ValueError as exc:
        raise ConfigError(
            f"task {section.name!r}: command cannot be split ({exc}); check its quotes"
        ) from None
    if not words:
        raise ConfigError(f"task {section.name!r}: command is empty")
    return words


def _policy(section: configparser.SectionProxy) -> TaskPolicy:
    name = section.name
    try:
        validation.check_task_name(name)
    except InvalidInput as exc:
        raise ConfigError(f"tasks config: {exc}") from None
    unknown = set(section) - KEYS
    if unknown:
        raise ConfigError(
            f"task {name!r}: unknown keys {', '.join(sorted(unknown))}; the keys are "
            f"{', '.join(sorted(KEYS))}"
        )
    has_handler = bool(section.get("handler", "").strip())
    has_command = bool(section.get("command", "").strip())
    if has_handler == has_command:
        raise ConfigError(
            f"task {name!r}: give exactly one of handler = module:function or "
            "command = program args"
        )
    mode = section.get("mode", "thread").strip()
    if mode not in MODES:
        raise ConfigError(f"task {name!r}: mode = {mode!r}; use thread or process")
    if has_command:
        mode = "process"  # a program is always a child process, whatever [DEFAULT] says
    handler = section["handler"].strip() if has_handler else None
    if handler is not None and not re.fullmatch(r"[\w.]+:[\w.]+", handler):
        raise ConfigError(
            f"task {name!r}: handler = {handler!r}; write it as package.module:function"
        )

    base = _number(section, "backoff_base", 0, validation.MAX_BACKOFF_S,
                   low_open=True, default=1.0)
    return TaskPolicy(
        task_name=name,
        handler=handler,
        command=_command(section) if has_command else None,
        mode=mode,
        timeout_s=_number(section, "timeout", 0, validation.MAX_TIMEOUT_S,
                          low_open=True, default=None),
        max_attempts=_whole(section, "max_attempts", 1, validation.MAX_ATTEMPTS, 5),
        backoff_base_s=base,
        backoff_max_s=_number(section, "backoff_max", base, validation.MAX_BACKOFF_S,
                              default=max(base, 3600.0)),
        kill_grace_s=_number(section, "kill_grace", 0, 3600,
                             default=DEFAULT_KILL_GRACE_S),
        non_retryable_exit_codes=_exit_codes(section),
    )


def parse_policies(text: str, source: str = "<tasks config>") -> dict[str, TaskPolicy]:
    """Parse registry text into one policy per task name; raises ConfigError."""
    config = configparser.ConfigParser(interpolation=None, default_section="DEFAULT")
    try:
        config.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {exc.message.splitlines()[0]}") from None
    unknown_defaults = set(config.defaults()) - KEYS
    if unknown_defaults:
        raise ConfigError(
            f"{source}: unknown keys in [DEFAULT]: "
            f"{', '.join(sorted(unknown_defaults))}"
        )
    policies = {name: _policy(config[name]) for name in config.sections()}
    if not policies:
        raise ConfigError(f"{source}: no task sections; add one [task-name] section "
                          "per task")
    return policies


def load_policies(path: Path | str | None = None) -> dict[str, TaskPolicy]:
    """Policies from path; with None, /etc/absurd/tasks.conf or the built-in routing.

    Imports no handler. Raises ConfigError when a named file is missing or invalid.
    """
    if path is None:
        if not DEFAULT_TASKS_CONFIG.exists():
            return parse_policies(default_routing(), "<built-in DSA-110 routing>")
        path = DEFAULT_TASKS_CONFIG
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the tasks config {path}: {exc.strerror}; check --tasks-config"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the tasks config {path} is not UTF-8 text") from None
    return parse_policies(text, str(path))


# -- handlers -------------------------------------------------------------------------


def import_callable(reference: str) -> Callable[..., Any]:
    """The callable that ``package.module:attribute`` names; raises ConfigError."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # any import-time error makes the handler unusable
        raise ConfigError(
            f"cannot load {reference}: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(target):
        raise ConfigError(f"cannot load {reference}: it is not callable")
    return target


def takes_context(function: Callable[..., Any]) -> bool:
    """Whether function takes (params, ctx) rather than (params); raises ConfigError."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        raise ConfigError(
            f"handler {function.__qualname__} takes no arguments; it must take "
            "(params) or (params, ctx)"
        )
    return len(positional) >= 2


def render_command(template: tuple[str, ...], params: Mapping[str, Any]) -> list[str]:
    """The argv of a command: each {param} replaced inside its own argument.

    Raises KeyError naming a param the template needs and the task lacks.
    """

    def value_of(match: re.Match[str]) -> str:
        if match.group(0) == "{{":
            return "{"
        if match.group(0) == "}}":
            return "}"
        value = params[match.group(1)]
        if value is None:
            raise KeyError(match.group(1))
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"))
        return str(value)

    return [PLACEHOLDER.sub(value_of, word) for word in template]


def _command_problem(policy: TaskPolicy) -> str | None:
    program = (policy.command or ("",))[0]
    if PLACEHOLDER.search(program):
        return None
    if "/" in program:
        if os.access(program, os.X_OK) and not os.path.isdir(program):
            return None
        return f"program {program} is missing or not executable"
    if shutil.which(program) is None:
        return f"program {program} is not on PATH"
    return None


def _child_problems(references: list[str]) -> dict[str, str]:
    """Load process-mode handlers in a child, so that the worker never imports them."""
    if not references:
        return {}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "absurd.child", "--check", *references],
            capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        reason = f"the handler check in a child process failed: {exc}"
        return {reference: reason for reference in references}


def load_handlers(policies: Mapping[str, TaskPolicy]) -> Registry:
    """Load every handler; those that cannot be loaded are reported, not fatal."""
    handlers: dict[str, Handler] = {}
    problems: dict[str, str] = {}
    in_child = sorted({p.handler for p in policies.values()
                       if p.handler and p.mode == "process"})
    child_problems = _child_problems(in_child)

    for name, policy in sorted(policies.items()):
        try:
            if policy.command is not None:
                problem = _command_problem(policy)
                if problem:
                    raise ConfigError(problem)
                handlers[name] = Handler(policy)
            elif policy.mode == "process":
                if child_problems.get(policy.handler or ""):
                    raise ConfigError(child_problems[policy.handler or ""])
                handlers[name] = Handler(policy)
            else:
                function = import_callable(policy.handler or "")
                handlers[name] = Handler(policy, function, takes_context(function))
        except ConfigError as exc:
            problems[name] = str(exc)
    return Registry(handlers, problems)
