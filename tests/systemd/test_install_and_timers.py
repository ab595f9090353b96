"""The install and uninstall commands, and timers, under a real systemd."""

from __future__ import annotations

import pytest

from machine import REPO, Machine
from sandbox import wait_until

pytestmark = pytest.mark.systemd


def test_install_places_units_user_and_examples_then_verify_is_clean(
    machine: Machine,
) -> None:
    output = machine.install()

    assert "installed;" in output
    account = machine.sandbox.run("getent", "passwd", "absurd").stdout
    assert account.startswith("absurd:")
    for path in ("/etc/absurd/absurd.conf", "/etc/absurd/worker@1.conf",
                 "/var/lib/absurd/backups", "/opt/absurd/scripts/run_absurd_worker.py"):
        assert machine.sandbox.path(path).exists(), path
    assert machine.show("absurd-worker@1.service", "LoadState") == "loaded"
    assert machine.show("absurd-workers.target", "LoadState") == "loaded"
    verify = machine.sandbox.run(
        "systemd-analyze", "verify", "--man=no",
        "absurd-worker@1.service", "absurd-workers.target", check=False,
    )
    assert verify.stderr == ""
    assert verify.returncode == 0


def test_install_keeps_an_existing_config(machine: Machine) -> None:
    machine.sandbox.write("/etc/absurd/absurd.conf", "queue = mine\n")

    output = machine.install()

    assert "kept existing /etc/absurd/absurd.conf" in output
    kept = machine.sandbox.path("/etc/absurd/absurd.conf").read_text()
    assert kept == "queue = mine\n"


def test_uninstall_removes_what_install_placed_and_keeps_config(
    machine: Machine,
) -> None:
    machine.install()
    machine.systemctl("enable", "absurd-worker@1.service", "absurd-workers.target")

    machine.sandbox.run(f"{REPO}/scripts/uninstall_systemd.sh")

    for path in ("/opt/absurd", "/usr/local/lib/systemd/system/absurd-worker@.service",
                 "/usr/local/lib/sysusers.d/absurd.conf",
                 "/etc/systemd/system/absurd-workers.target.wants"):
        assert not machine.sandbox.path(path).exists(), path
    assert machine.sandbox.path("/etc/absurd/absurd.conf").exists()
    assert machine.show("absurd-worker@1.service", "LoadState") == "not-found"


def test_a_new_timer_is_one_more_unit_pair(machine: Machine, dsn: str) -> None:
    checkout = machine.add_checkout_copy_with_timer_pair()
    machine.install(checkout)
    machine.configure(dsn)

    machine.systemctl("start", "absurd-selftest.timer")

    assert wait_until(
        lambda: "selftest tick: database answered"
        in machine.journal("absurd-selftest.service"),
        timeout_s=15,
    ), machine.journal("absurd-selftest.service")
    assert machine.show("absurd-selftest.service", "Result") == "success"
    assert machine.show("absurd-selftest.timer", "ActiveState") == "active"
