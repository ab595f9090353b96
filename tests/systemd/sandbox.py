"""A real systemd booted as PID 1 in private namespaces, for tests of the units.

The sandbox runs systemd on a copy-on-write overlay of the host's / (writes land in
a tmpfs), in its own pid, mount, uts, ipc, net and cgroup namespaces: only ``lo``,
no way to the host's network, its own journal. Tests reach it with
``nsenter --target PID --all``, the way `machinectl shell` would. Needs root,
overlayfs and a cgroup2 hierarchy; `unavailable_reason()` says what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INIT_SCRIPT = Path(__file__).resolve().parent / "sandbox_init.sh"
SYSTEMD = Path("/lib/systemd/systemd")
CGROUP2_MOUNTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
#: Seconds to wait for the inner systemd to exec, boot, and power off.
EXEC_TIMEOUT_S = 20
BOOT_TIMEOUT_S = 60
POWEROFF_TIMEOUT_S = 20


class SandboxError(Exception):
    """The sandbox could not be booted or driven: see the console log it names."""


@dataclass(frozen=True)
class Bind:
    """A host folder shown inside the sandbox."""

    host: Path
    inner: str
    read_only: bool = True

    def argument(self) -> str:
        for path in (str(self.host), self.inner):
            if ":" in path:
                raise SandboxError(f"bind path {path!r} contains ':'; choose another")
        return f"{self.host}:{self.inner}:{'ro' if self.read_only else 'rw'}"


def cgroup2_root() -> Path | None:
    """Where this process's cgroup sits in the host's cgroup2 hierarchy."""
    for mount in CGROUP2_MOUNTS:
        try:
            fs_type = subprocess.run(
                ["stat", "-f", "-c", "%T", str(mount)], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            continue
        if fs_type == "cgroup2fs":
            own = Path("/proc/self/cgroup").read_text()
            relative = next(
                line[3:] for line in own.splitlines() if line.startswith("0::")
            )
            return mount / relative.strip("/")
    return None


def unavailable_reason() -> str | None:
    """Why a sandbox cannot boot on this host, or None when it can."""
    if os.geteuid() != 0:
        return "the systemd sandbox needs root (namespaces, mounts, cgroups)"
    for tool in ("unshare", "nsenter", "mount", "pivot_root"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    if not SYSTEMD.exists():
        return f"no {SYSTEMD}: systemd is not installed"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    if cgroup2_root() is None:
        return "no cgroup2 hierarchy is mounted"
    return None


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.1
) -> bool:
    """Poll predicate until it holds or timeout_s passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)


class Sandbox:
    """One booted systemd; boot() it, drive it with run(), always shutdown() it."""

    def __init__(self, binds: Sequence[Bind] = ()) -> None:
        self.binds = list(binds)
        self.workdir = Path(tempfile.mkdtemp(prefix="absurd-sandbox-"))
        self.console = self.workdir / "console.log"
        self.cgroup: Path | None = None
        self.unshare: subprocess.Popen | None = None
        self.pid: int | None = None

    def boot(self) -> None:
        """Start systemd and wait until it has finished booting."""
        root = cgroup2_root()
        assert root is not None, unavailable_reason()
        self.cgroup = root / f"{self.workdir.name}"
        self.cgroup.mkdir()
        procs = self.cgroup / "cgroup.procs"

        def join_cgroup() -> None:
            procs.write_text(str(os.getpid()))

        with open(self.console, "wb") as console:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net",
                 "--cgroup", "--propagation", "private",
                 "bash", str(INIT_SCRIPT), str(self.workdir),
                 *(bind.argument() for bind in self.binds)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                preexec_fn=join_cgroup, start_new_session=True,
            )
        if not wait_until(self._find_systemd, EXEC_TIMEOUT_S):
            raise SandboxError(f"systemd did not start: {self._console_tail()}")
        if not wait_until(self._manager_listens, EXEC_TIMEOUT_S):
            raise SandboxError(
                f"systemd did not open its socket: {self._console_tail()}"
            )
        state = self.run(
            "systemctl", "is-system-running", "--wait", check=False,
            timeout=BOOT_TIMEOUT_S,
        ).stdout.strip()
        log.info("sandbox booted state=%s pid=%s", state, self.pid)

    def _find_systemd(self) -> bool:
        assert self.unshare is not None
        if self.unshare.poll() is not None:
            raise SandboxError(f"the sandbox init failed: {self._console_tail()}")
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        try:
            pids = children.read_text().split()
            comm = Path(f"/proc/{pids[0]}/comm").read_text().strip() if pids else ""
        except OSError:
            return False
        if comm == "systemd":
            self.pid = int(pids[0])
        return self.pid is not None

    def _console_tail(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no console output)"

    def _manager_listens(self) -> bool:
        listening = self.run("test", "-S", "/run/systemd/private", check=False)
        return listening.returncode == 0

    def run(
        self, *command: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a command inside the sandbox (all its namespaces, its root)."""
        assert self.pid is not None, "boot() the sandbox first"
        result = subprocess.run(
            ["nsenter", "--target", str(self.pid), "--all", *command],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise SandboxError(
                f"{' '.join(command)} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def path(self, inner: str) -> Path:
        """The host's view of a path inside the sandbox."""
        assert self.pid is not None, "boot() the sandbox first"
        return Path(f"/proc/{self.pid}/root") / inner.lstrip("/")

    def write(self, inner: str, text: str, mode: int = 0o644) -> None:
        """Create or replace a file inside the sandbox."""
        target = self.path(inner)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def shutdown(self) -> None:
        """Power off (SIGKILL to its PID 1 if that hangs) and remove the cgroup."""
        try:
            self._power_off()
        finally:
            self._remove_cgroup()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _power_off(self) -> None:
        if self.unshare is None or self.unshare.poll() is not None:
            return
        if self.pid is not None:
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
        try:
            self.unshare.wait(POWEROFF_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            log.warning("sandbox did not power off; killing its PID 1 pid=%s", self.pid)
        # The kernel ends every process of a pid namespace when its init dies.
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
        else:
            os.killpg(self.unshare.pid, signal.SIGKILL)
        self.unshare.wait(POWEROFF_TIMEOUT_S)

    def _remove_cgroup(self) -> None:
        if self.cgroup is None or not self.cgroup.exists():
            return
        # Children first; a cgroup can be removed once its processes have exited.
        for folder in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
            if folder.is_dir():
                wait_until(lambda: _try_rmdir(folder), 5)
        if not wait_until(lambda: _try_rmdir(self.cgroup), 5):
            raise SandboxError(f"cgroup {self.cgroup} still has processes")


def _try_rmdir(folder: Path) -> bool:
    try:
        folder.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
