"""Static checks of the units in systemd/: systemd's own verifier, the security
exposure, every calendar expression, and the directives the worker relies on.

Each unit is checked as it will be installed: in a private mount namespace,
/opt/absurd/venv is this checkout's Python environment and /opt/absurd/scripts its
scripts, so `systemd-analyze verify` also finds the programs ExecStart= names.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
TEST_UNITS = REPO / "tests" / "systemd" / "timer_pair"
WORKER = UNITS / "absurd-worker@.service"
INSTALLED_TYPES = (".service", ".timer", ".target")
MAX_WORKER_EXPOSURE = 2.0
#: Options that only make sense on the command line, not in absurd.conf.
COMMAND_LINE_ONLY = {"help", "config", "instance"}

#: Directives whose reason is not obvious from their name: each needs a comment.
NEEDS_A_COMMENT = {
    "Type", "NotifyAccess", "WatchdogSec", "TimeoutAbortSec", "ExecStart",
    "Environment", "StateDirectory", "WorkingDirectory", "RestartPreventExitStatus",
    "TimeoutStopSec", "KillMode", "PartOf", "StartLimitBurst", "StartLimitIntervalSec",
    "After", "Wants", "RestrictAddressFamilies", "SystemCallErrorNumber",
    "CapabilityBoundingSet", "UMask", "ProtectProc", "ProtectSystem", "DefaultInstance",
}

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or shutil.which("unshare") is None,
    reason="systemd-analyze and unshare (util-linux) are needed to check units",
)


def unit_files(folder: Path = UNITS) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in INSTALLED_TYPES)


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every directive, in file order."""
    section = ""
    found = []
    # A trailing backslash continues a directive on the next line.
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.append((section, key.strip(), value.strip()))
    return found


def values(unit: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives(unit) if s == section and k == key]


def seconds(text: str) -> float:
    """A systemd time span such as 90s, 10min or 1min 30s, in seconds."""
    factors = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * factors[unit]
    return total


def venv_of_this_checkout() -> Path:
    local = REPO / ".venv"
    return local if (local / "bin" / "python").exists() else Path(sys.prefix)


def run_as_installed(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """Run command in folder, in a private mount namespace laid out as installed."""
    setup = (
        "set -e; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /opt; "
        'mkdir /opt/absurd; ln -s "$1" /opt/absurd/venv; '
        'ln -s "$2" /opt/absurd/scripts; cd "$3"; shift 3; exec "$@"'
    )
    # Without root, a user namespace grants the right to mount.
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *as_root,
         "sh", "-c", setup, "sh", str(venv_of_this_checkout()), str(REPO / "scripts"),
         str(folder), *command],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def installed_units(tmp_path: Path) -> Path:
    """Every unit of systemd/, templates as their instance 1, in one folder."""
    for unit in unit_files():
        name = unit.name.replace("@.", "@1.")
        shutil.copy(unit, tmp_path / name)
    return tmp_path


def test_every_unit_passes_systemd_analyze_verify(installed_units: Path) -> None:
    names = [f"./{p.name}" for p in sorted(installed_units.iterdir())]

    result = run_as_installed(
        installed_units, "systemd-analyze", "verify", "--man=no", *names
    )

    # verify exits 0 on unknown keys and bad values: only an empty stderr is clean.
    assert result.stderr == ""
    assert result.returncode == 0


def test_verify_reports_a_misspelt_directive(installed_units: Path) -> None:
    worker = installed_units / "absurd-worker@1.service"
    worker.write_text(worker.read_text().replace("KillMode=", "KilMode="))

    result = run_as_installed(
        installed_units, "systemd-analyze", "verify", "--man=no",
        "./absurd-worker@1.service",
    )

    assert "Unknown key 'KilMode'" in result.stderr


def test_worker_exposure_is_at_most_2(installed_units: Path) -> None:
    result = run_as_installed(installed_units, "systemd-analyze", "security",
                              "--offline=yes", "./absurd-worker@1.service")

    match = re.search(r"Overall exposure level for absurd-worker@1\.service: ([\d.]+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_WORKER_EXPOSURE


def calendar_expressions() -> list[tuple[str, str]]:
    timers = unit_files() + unit_files(TEST_UNITS)
    return [
        (timer.name, value)
        for timer in timers if timer.suffix == ".timer"
        for value in values(timer, "OnCalendar", section="Timer")
    ]


@pytest.mark.parametrize(("timer", "expression"), calendar_expressions())
def test_every_on_calendar_parses(timer: str, expression: str) -> None:
    result = subprocess.run(["systemd-analyze", "calendar", expression],
                            capture_output=True, text=True, timeout=30)

    assert result.stderr == "", f"{timer}: {result.stderr}"
    assert result.returncode == 0
    assert "Next elapse:" in result.stdout


def test_every_timer_comes_with_its_service() -> None:
    timers = [u for u in unit_files() + unit_files(TEST_UNITS) if u.suffix == ".timer"]
    for timer in timers:
        fired = values(timer, "Unit", section="Timer") or [timer.stem + ".service"]
        assert (timer.parent / fired[0]).exists(), f"{timer.name}: no {fired[0]}"


def test_install_places_every_kind_of_unit_shipped() -> None:
    shipped = {p.suffix for p in UNITS.iterdir() if p.is_file()}
    script = (REPO / "scripts" / "install_systemd.sh").read_text()

    assert shipped <= set(INSTALLED_TYPES)
    for suffix in INSTALLED_TYPES:
        assert f'"$REPO"/systemd/*{suffix}' in script


@pytest.mark.parametrize(
    "service", [u.name for u in unit_files() if u.suffix == ".service"]
)
def test_services_run_python_directly_not_a_shell(service: str) -> None:
    for command in values(UNITS / service, "ExecStart"):
        program = command.lstrip("-@:+!").split()[0]
        assert program == "/opt/absurd/venv/bin/python", command


def test_worker_is_a_notify_service_with_watchdog_and_restart() -> None:
    assert values(WORKER, "Type") == ["notify"]
    assert values(WORKER, "NotifyAccess") == ["main"]
    assert seconds(values(WORKER, "WatchdogSec")[0]) > 0
    assert values(WORKER, "Restart") == ["on-failure"]
    assert seconds(values(WORKER, "RestartSec")[0]) > 0
    assert values(WORKER, "StartLimitBurst", section="Unit")
    assert values(WORKER, "StartLimitIntervalSec", section="Unit")
    assert values(WORKER, "KillMode") == ["mixed"]
    assert values(WORKER, "SyslogIdentifier") == ["absurd-worker@%i"]
    assert values(WORKER, "PartOf", section="Unit") == ["absurd-workers.target"]
    assert "--instance %i" in values(WORKER, "ExecStart")[0]


def worker_parser() -> argparse.ArgumentParser:
    """The worker script's own option parser, with its defaults."""
    script = REPO / "scripts" / "run_absurd_worker.py"
    spec = importlib.util.spec_from_file_location("run_absurd_worker", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser(None)


def test_worker_stop_timeout_outlasts_its_drain_timeout() -> None:
    drain_timeout = worker_parser().get_default("drain_timeout")

    assert seconds(values(WORKER, "TimeoutStopSec")[0]) > drain_timeout


def test_worker_start_timeout_outlasts_its_wait_for_the_database() -> None:
    startup_timeout = worker_parser().get_default("startup_timeout")

    assert seconds(values(WORKER, "TimeoutStartSec")[0]) > startup_timeout


def test_example_config_documents_every_worker_setting() -> None:
    example = (REPO / "etc" / "absurd.conf").read_text()
    documented = set(re.findall(r"^#?([a-z][a-z-]*) =", example, re.MULTILINE))

    settings = {
        option[2:]
        for action in worker_parser()._actions
        for option in action.option_strings if option.startswith("--")
    }

    assert settings - COMMAND_LINE_ONLY <= documented


def test_worker_is_hardened() -> None:
    expected = {
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectHome": "yes",
        "SystemCallFilter": "@system-service", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert values(WORKER, key) == [value], key
    assert re.fullmatch(r"0[0-7]{3}", values(WORKER, "UMask")[0])


@pytest.mark.parametrize("unit", [u.name for u in unit_files()])
def test_non_obvious_directives_carry_a_comment(unit: str) -> None:
    lines = (UNITS / unit).read_text().splitlines()
    for number, line in enumerate(lines):
        key = line.partition("=")[0].strip()
        if "=" not in line or line.startswith("#") or key not in NEEDS_A_COMMENT:
            continue
        # A comment above, possibly over a few related directives, says why.
        above = number - 1
        while above >= 0 and lines[above].strip() and "=" in lines[above] \
                and not lines[above].startswith("#"):
            above -= 1
        assert above >= 0 and lines[above].startswith("#"), f"{unit}: {line}"
