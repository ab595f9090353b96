"""A booted sandbox driven the way an operator drives a host: install, configure,
systemctl, journalctl.

The test PostgreSQL runs on the host (the session's pg_cluster); the sandbox has no
network to reach it, so its Unix socket folder is shown inside at PG_SOCKET_DIR.
That folder is outside /tmp on purpose: the worker's PrivateTmp= would hide it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from psycopg import conninfo

from pgcluster import PgCluster
from sandbox import Bind, Sandbox, wait_until

REPO = Path(__file__).resolve().parents[2]
PG_SOCKET_DIR = "/srv/absurd-test-pg"
TIMER_PAIR = Path(__file__).resolve().parent / "timer_pair"
#: A copy of the installable parts of the checkout, with the test timer pair added.
CHECKOUT_COPY = "/srv/absurd-checkout"


def venv_dir() -> Path:
    return Path(sys.prefix)


def host_binds(cluster: PgCluster) -> list[Bind]:
    """The checkout, the Python it runs with, and the test database's sockets."""
    binds = [Bind(REPO, str(REPO)), Bind(cluster.root, PG_SOCKET_DIR)]
    for folder in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}:
        if not folder.is_relative_to(REPO):
            binds.append(Bind(folder, str(folder)))
    return binds


def inner_dsn(host_dsn: str) -> str:
    """The same database, reached from inside the sandbox through the socket."""
    params = conninfo.conninfo_to_dict(host_dsn)
    params["host"] = PG_SOCKET_DIR
    return conninfo.make_conninfo(**params)


class Machine:
    """A booted sandbox seen the way an operator sees a host: systemctl, journalctl."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.sandbox.run("systemctl", *args, check=check).stdout

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--property", prop, "--value", unit).strip()

    def journal(self, unit: str, *args: str) -> str:
        return self.sandbox.run(
            "journalctl", "--unit", unit, "--no-pager", "--output", "cat", *args
        ).stdout

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID"))

    def kill(self, pid: int, signal_name: str) -> None:
        """Send a signal to a process of the sandbox, by its pid in there."""
        self.sandbox.run("kill", f"-{signal_name}", str(pid))

    def wait_for(self, unit: str, prop: str, value: str, timeout_s: float) -> bool:
        return wait_until(lambda: self.show(unit, prop) == value, timeout_s)

    def install(self, checkout: str = str(REPO)) -> str:
        """Run the install command of a checkout, as a new user would."""
        return self.sandbox.run(
            f"{checkout}/scripts/install_systemd.sh", "--venv", str(venv_dir())
        ).stdout

    def configure(self, dsn: str, extra: str = "") -> None:
        """Set the dsn in /etc/absurd/absurd.conf, as the install's last line asks."""
        conf = self.sandbox.path("/etc/absurd/absurd.conf")
        conf.write_text(conf.read_text() + f"\ndsn = {inner_dsn(dsn)}\n{extra}")

    def add_checkout_copy_with_timer_pair(self) -> str:
        """A checkout whose systemd/ holds one more unit pair (and its script)."""
        copy = self.sandbox.path(CHECKOUT_COPY)
        for part in ("scripts", "systemd", "etc"):
            shutil.copytree(REPO / part, copy / part)
        for unit in TIMER_PAIR.glob("absurd-selftest.*"):
            shutil.copy(unit, copy / "systemd")
        shutil.copy(TIMER_PAIR / "selftest_absurd.py", copy / "scripts")
        return CHECKOUT_COPY
