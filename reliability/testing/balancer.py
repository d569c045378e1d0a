"""What the rig's real load balancers (nginx.py, haproxy.py) share: a directory of their
own under the fleet's, owned by the login user; the real binary run in the foreground as
that user, in a process group of its own with a parent-death signal, so ``stop()`` (or a
killed test run) ends every process of it, old generations included; and an upstream file
as an operator keeps it (parameters, comments, another block), which the login user
edits over SSH exactly as a runbook does.

A subclass names its binary, writes its main config, says how it is started, checked and
reloaded, and which of its processes serve the current configuration.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from reliability.balancers import Balancer, for_config
from reliability.config import LoadBalancerConfig

if TYPE_CHECKING:
    from reliability.testing.fleet import Fleet

DEFAULT_PORT = 8080
PROXY_TRIES = 3
READY_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Paths go into the configs unquoted: no spaces, quotes, `$` or `;`.
SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")
NAME = re.compile(r"[A-Za-z0-9_-]+")

Member = tuple[str, bool]  # ("address:port", down)


def as_member(member: str | Member) -> Member:
    """A member given as its address alone serves."""
    return (member, False) if isinstance(member, str) else member


class BalancerError(RuntimeError):
    """The balancer cannot be set up, started or reloaded here; says why (with its log)."""


class RigBalancer(ABC):
    """A real balancer on ``node`` of a started ``fleet``, balancing ``service``."""

    kind: ClassVar[str]
    binary: ClassVar[str]
    error: ClassVar[type[BalancerError]] = BalancerError

    def __init__(
        self,
        fleet: Fleet,
        node: str,
        *,
        service: str = "chat",
        members: Sequence[str | Member] = (),
        port: int = DEFAULT_PORT,
        workers: int = 1,
    ) -> None:
        if not NAME.fullmatch(service):
            raise self.error(f"service name {service!r}: letters, digits, _ and - only")
        if not members:
            raise self.error(f"{self.kind} needs at least one upstream member (it may be down)")
        if workers < 1:
            raise self.error(f"{self.kind} needs at least one worker process")
        self.fleet = fleet
        self.node = node
        self.service = service
        self.address = fleet.node(node).address
        self.port = port
        self.workers = workers
        self.user = fleet.user
        self.dir = fleet.dir / f"{self.kind}-{node}"
        self._initial = list(members)
        self._proc: subprocess.Popen[bytes] | None = None

    # --- what a kind defines -----------------------------------------------------------------

    @property
    @abstractmethod
    def config_file(self) -> Path: ...

    @property
    @abstractmethod
    def upstream_file(self) -> Path: ...

    @abstractmethod
    def main_config(self) -> str:
        """The main config: everything the balancer writes stays in ``self.dir``."""

    @abstractmethod
    def launch_args(self) -> list[str]:
        """The arguments the binary is started with, in the foreground."""

    @abstractmethod
    def check_config(self) -> None:
        """Validate the files as the login user; raise ``self.error`` with the output."""

    @abstractmethod
    def reload(self) -> float:
        """Reload as a runbook does, then wait until the new generation serves; seconds."""

    @abstractmethod
    def _workers(self) -> list[tuple[int, bool]]:
        """Every worker process: (pid, serves the current configuration)."""

    def _ready(self) -> bool:
        return bool(self.serving_worker_pids()) and self._answers()

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Any:
        """Write the files, check the config as the login user, run it until it serves."""
        reason = self.missing_requirement()
        if reason:
            raise self.error(reason)
        if self._proc is not None:
            raise self.error(f"{self.kind} on {self.node} is already started")
        if not SAFE_PATH.fullmatch(str(self.dir)):
            raise self.error(f"{self.dir}: {self.kind} config paths must not need quoting")
        try:
            self._write_files()
            self.check_config()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    @classmethod
    def missing_requirement(cls) -> str | None:
        """None when this balancer can start on this machine, else what is missing."""
        if not os.access(cls.binary, os.X_OK):
            return f"{cls.kind} not installed ({cls.binary})"
        return None

    def _write_files(self) -> None:
        self.dir.mkdir()
        self._make_dirs()
        self.config_file.write_text(self.main_config())
        self.upstream_file.write_text(self.render(self._initial))
        # The login user rewrites the upstream file by rename and the balancer writes its
        # pid and logs here: it owns the directory and all in it.
        for path in [self.dir, *self.dir.rglob("*")]:
            self._chown(path)

    def _make_dirs(self) -> None:
        """Directories the main config names, made before it is checked (none by default)."""
        return None

    def _chown(self, path: Path) -> None:
        if self._switch_user:
            shutil.chown(path, self.user, pwd.getpwnam(self.user).pw_gid)

    @property
    def _switch_user(self) -> bool:
        return os.geteuid() == 0 and self.user != "root"

    def _launch(self) -> None:
        options: dict[str, Any] = {}
        if self._switch_user:
            # Not runuser: it stays the balancer's parent (PAM session), so the pid we hold,
            # signal and wait for would not be the balancer's. Popen switches, then execs.
            entry = pwd.getpwnam(self.user)
            options = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(self.user, entry.pw_gid),
            }
        # setpriv sets PR_SET_PDEATHSIG after the switch (a credential change would clear
        # it): if the test process is killed outright, the balancer goes with it. The signal
        # follows the starting *thread*: start from one that outlives it (pytest's main).
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        with (self.dir / f"{self.kind}.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [*prefix, self.binary, *self.launch_args()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.dir,
                env={"PATH": PATH},
                start_new_session=True,  # its own process group: workers included
                **options,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise self.error(
                    f"{self.kind} on {self.address}:{self.port} did not start:\n{self.log()}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """End the master and every worker (old generations too); safe to call twice,
        and after the fleet removed the files."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # fast shutdown: the master ends its workers, then itself
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_TIMEOUT_S)
        # A worker orphaned by a killed master stays in the group: end it too.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while left := _group_members(proc.pid, self.binary):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise self.error(f"{self.kind} processes {left} survived SIGKILL")
            time.sleep(0.02)

    # --- where things are -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    @property
    def health_url(self) -> str:
        """What a runbook's verify asks: the engine's /health through the balancer (its
        ``/`` answers what the engine's does: 404)."""
        return f"{self.url}health"

    def lb_config(self, service: str | None = None) -> dict[str, str]:
        """The ``services[].load_balancer`` section of a reliability config for this one."""
        if service not in (None, self.service):
            raise self.error(f"this {self.kind} balances {self.service!r}, not {service!r}")
        return {
            "kind": self.kind,
            "node": self.node,
            "upstream_file": str(self.upstream_file),
            "config_file": str(self.config_file),
            "url": self.url,
            "health_url": self.health_url,
        }

    @property
    def balancer(self) -> Balancer:
        """The runbooks' balancer for this one (its file format and commands)."""
        return for_config(LoadBalancerConfig(**self.lb_config()))

    def log(self) -> str:
        """What the balancer said on stderr and in its logs (for failure messages)."""
        parts = []
        for path in self._log_files():
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts).strip()

    def _log_files(self) -> list[Path]:
        return [self.dir / f"{self.kind}.out"]

    # --- processes ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def worker_pids(self) -> list[int]:
        """Every worker of the master, those finishing requests after a reload included."""
        return [pid for pid, _ in self._workers()]

    def serving_worker_pids(self) -> list[int]:
        """The workers of the current configuration (not the ones finishing)."""
        return [pid for pid, serving in self._workers() if serving]

    def wait_reloaded(self, before: set[int], timeout_s: float = RELOAD_TIMEOUT_S) -> bool:
        """True once a new generation of workers (none of ``before``) is serving."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = set(self.serving_worker_pids())
            if now and not now & before:
                return True
            time.sleep(0.01)
        return False

    def ssh(
        self, command: str, stdin: str | None = None, *, node: str | None = None
    ) -> tuple[str, str, int]:
        """``command`` over SSH on the balancer's node (or ``node``) as the login user, as
        the runbook executor sends it; (stdout, stderr, exit status)."""
        client = self.fleet.ssh_client(node or self.node)
        try:
            channel_in, out, err = client.exec_command(command, timeout=COMMAND_TIMEOUT_S)
            if stdin is not None:
                channel_in.write(stdin)
            channel_in.channel.shutdown_write()
            return out.read().decode(), err.read().decode(), out.channel.recv_exit_status()
        finally:
            client.close()

    def run_as_user(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The binary with ``args`` locally as the login user (as SSH would run it)."""
        return self.shell_as_user([self.binary, *args])

    def shell_as_user(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self._switch_user else []
        return subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            cwd=self.dir,
            env={"PATH": PATH},
        )

    # --- upstream ---------------------------------------------------------------------------

    @abstractmethod
    def render(self, members: Sequence[str | Member]) -> str:
        """The upstream file as an operator keeps it, for these members: each server line
        with parameters of its own (weight, failure limits), a comment, the kind's
        connection reuse, and an unrelated second block; all of it a runbook must keep."""

    def _server_name(self, address: str) -> str:
        """The node's name at ``address`` (as a runbook names it), else one made of it."""
        host = address.rsplit(":", 1)[0].strip("[]")
        for node in self.fleet.nodes:
            if node.address == host:
                return node.name
        return "at-" + re.sub(r"[^A-Za-z0-9]+", "-", address).strip("-")

    def members(self) -> list[Member]:
        """The service's members in the upstream file as it is now: ("address:port", down)."""
        text = self.upstream_file.read_text()
        membership = self.balancer.read_membership(text, self.service)
        return [(s.address, s.down) for s in membership.servers]

    def set_members(self, members: Sequence[str | Member]) -> None:
        """Replace the upstream file (atomically, owned by the login user) and reload."""
        new = self.upstream_file.with_name(self.upstream_file.name + ".rig-new")
        new.write_text(self.render(members))
        self._chown(new)
        new.replace(self.upstream_file)
        self.reload()


# --- /proc -------------------------------------------------------------------------------


def stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name; None if gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in {"Z", "X"} else fields


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> list[int]:
    return sorted(p for p in _pids() if (f := stat(p)) is not None and int(f[1]) == pid)


def _group_members(pgid: int, binary: str) -> list[int]:
    """Live processes of ``binary`` in process group ``pgid``."""
    name = os.path.basename(binary)
    found = []
    for pid in _pids():
        fields = stat(pid)
        if fields is not None and int(fields[2]) == pgid and name in title(pid).split(":")[0]:
            found.append(pid)
    return found


def title(pid: int) -> str:
    """The process's command line, or the title it set ("nginx: worker process")."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
