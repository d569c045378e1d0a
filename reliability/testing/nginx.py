"""A real nginx load balancer on one node of the rig, run as the fleet's login user.

``NginxBalancer(fleet, "lb-1", service="chat", members=["127.0.1.1:8000"])`` writes, in a
directory of its own under ``fleet.dir`` owned by the login user, a main config and the
service's upstream file, and runs nginx listening on the LB node's address (port 8080).
Every path nginx writes (pid, logs, temp dirs, lock) is in that directory, so the login
user over SSH can do exactly what a runbook does on a real balancer: ``cat`` the upstream
file, replace it (``cat > F.reliability-new && mv -f F.reliability-new F``), ``nginx -t -c
CONF`` and ``nginx -c CONF -s reload``.

nginx runs in the foreground (``daemon off``) as a child of the test process, in a
process group of its own and with a parent-death signal, so ``stop()`` (or a killed test
run) ends the master and every worker, old generations included.

The proxy is set up for LLM traffic: HTTP/1.1 to the members, no buffering (tokens reach
the client as they are streamed), hour-long read timeouts, and a failed connect, timeout,
502 or 503 tried on the next member (at most ``PROXY_TRIES`` in all). ``GET /`` exactly is
the members' ``/health``, so the ``url`` a runbook checks answers 200 while one serves.
Every answer carries ``x-upstream-addr``: the member(s) nginx tried.
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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reliability.testing.fleet import Fleet

NGINX = "/usr/sbin/nginx"
DEFAULT_PORT = 8080
PROXY_TRIES = 3
READY_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
# Paths go into nginx's config unquoted-safe only: no spaces, quotes, `$` or `;`.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")
_SERVER = re.compile(r"^[ \t]*server[ \t]+([^;\s]+)((?:[ \t]+[^;\s]+)*)[ \t]*;", re.MULTILINE)
_NAME = re.compile(r"[A-Za-z0-9_-]+")

Member = tuple[str, bool]  # ("address:port", down)


class NginxError(RuntimeError):
    """nginx cannot be set up, started or reloaded here; says why (with its log)."""


def missing_requirement() -> str | None:
    """None when a balancer can start on this machine, else what is missing."""
    if not os.access(NGINX, os.X_OK):
        return f"nginx not installed ({NGINX})"
    return None


def upstream_config(service: str, members: Sequence[str | Member]) -> str:
    """An upstream file as the runbooks write it; a member is "addr:port" or (that, down)."""
    lines = []
    for member in members:
        address, down = (member, False) if isinstance(member, str) else member
        lines.append(f"    server {address}{' down' if down else ''};\n")
    return f"upstream {service} {{\n{''.join(lines)}}}\n"


def parse_members(text: str) -> list[Member]:
    """The ``server`` lines of an upstream file: ("address:port", down), in order."""
    text = re.sub(r"#[^\n]*", "", text)
    return [(m[1], "down" in m[2].split()) for m in _SERVER.finditer(text)]


def main_config(
    *, directory: Path, upstream_file: Path, service: str, address: str, port: int, workers: int
) -> str:
    """The main nginx config: everything nginx writes stays in ``directory``."""
    d = directory
    return f"""\
# The rig's load balancer (reliability/testing/nginx.py). Runs as the login user.
error_log {d}/error.log notice;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
daemon off;
master_process on;
worker_processes {workers};

events {{
    worker_connections 1024;
}}

http {{
    log_format rig '$remote_addr "$request" $status $body_bytes_sent '
                   'upstream=$upstream_addr upstream_status=$upstream_status '
                   'time=$request_time worker=$pid';
    access_log {d}/access.log rig;
    client_body_temp_path {d}/temp/client_body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 1m;

    include {upstream_file};

    server {{
        listen {address}:{port};

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_connect_timeout 2s;
        proxy_send_timeout 3600s;
        proxy_read_timeout 3600s;
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries {PROXY_TRIES};
        proxy_next_upstream_timeout 10s;
        add_header x-upstream-addr $upstream_addr always;

        # The url a runbook checks: 200 while a member serves.
        location = / {{
            proxy_pass http://{service}/health;
        }}
        location / {{
            proxy_pass http://{service};
        }}
    }}
}}
"""


class NginxBalancer:
    """nginx on ``node`` of a started ``fleet``, balancing ``service``; a context manager."""

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
        if not _NAME.fullmatch(service):
            raise NginxError(f"service name {service!r}: letters, digits, _ and - only")
        if not members:
            raise NginxError("nginx needs at least one upstream member (it may be down)")
        if workers < 1:
            raise NginxError("nginx needs at least one worker process")
        self.fleet = fleet
        self.node = node
        self.service = service
        self.address = fleet.node(node).address
        self.port = port
        self.workers = workers
        self.user = fleet.user
        self.dir = fleet.dir / f"nginx-{node}"
        self._initial = list(members)
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> NginxBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NginxBalancer:
        """Write the files, check the config as the login user, run nginx until it serves."""
        reason = missing_requirement()
        if reason:
            raise NginxError(reason)
        if self._proc is not None:
            raise NginxError(f"nginx on {self.node} is already started")
        if not _SAFE_PATH.fullmatch(str(self.dir)):
            raise NginxError(f"{self.dir}: nginx config paths must not need quoting")
        try:
            self._write_files()
            self.check_config()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_files(self) -> None:
        self.dir.mkdir()
        (self.dir / "temp").mkdir()
        self.config_file.write_text(
            main_config(
                directory=self.dir,
                upstream_file=self.upstream_file,
                service=self.service,
                address=self.address,
                port=self.port,
                workers=self.workers,
            )
        )
        self.upstream_file.write_text(upstream_config(self.service, self._initial))
        # The login user rewrites the upstream file by rename and nginx writes its pid,
        # logs and temp files here: it owns the directory and all in it.
        for path in [self.dir, *self.dir.rglob("*")]:
            self._chown(path)

    def _chown(self, path: Path) -> None:
        if self._switch_user:
            shutil.chown(path, self.user, pwd.getpwnam(self.user).pw_gid)

    @property
    def _switch_user(self) -> bool:
        return os.geteuid() == 0 and self.user != "root"

    def _launch(self) -> None:
        options: dict[str, Any] = {}
        if self._switch_user:
            # Not runuser: it stays nginx's parent (PAM session), so the pid we hold, signal
            # and wait for would not be nginx's. Popen switches identity, then execs.
            entry = pwd.getpwnam(self.user)
            options = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(self.user, entry.pw_gid),
            }
        # setpriv sets PR_SET_PDEATHSIG after the switch (a credential change would clear it):
        # if the test process is killed outright, nginx goes with it. The signal follows the
        # starting *thread*: start a balancer from one that outlives it (pytest's main thread).
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        with (self.dir / "nginx.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [*prefix, NGINX, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.dir,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                start_new_session=True,  # its own process group: workers included
                **options,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.serving_worker_pids() and self._answers()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise NginxError(
                    f"nginx on {self.address}:{self.port} did not start:\n{self.log()}"
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
        while left := _group_members(proc.pid):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise NginxError(f"nginx processes {left} survived SIGKILL")
            time.sleep(0.02)

    # --- where things are -----------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def upstream_file(self) -> Path:
        return self.dir / f"upstream-{self.service}.conf"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def lb_config(self, service: str | None = None) -> dict[str, str]:
        """The ``services[].load_balancer`` section of a reliability config for this nginx."""
        if service not in (None, self.service):
            raise NginxError(f"this nginx balances {self.service!r}, not {service!r}")
        return {
            "kind": "nginx",
            "node": self.node,
            "upstream_file": str(self.upstream_file),
            "config_file": str(self.config_file),
            "url": self.url,
        }

    def log(self) -> str:
        """What nginx said on stderr and in its error log (for failure messages)."""
        parts = []
        for path in (self.dir / "nginx.out", self.error_log):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts).strip()

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
        """The workers of the current configuration (not the ones shutting down)."""
        return [pid for pid, title in self._workers() if "shutting down" not in title]

    def _workers(self) -> list[tuple[int, str]]:
        master = self.pid
        if master is None:
            return []
        return [(pid, _title(pid)) for pid in _children(master)]

    # --- upstream ---------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The upstream file's members as it is now: ("address:port", down)."""
        return parse_members(self.upstream_file.read_text())

    def set_members(self, members: Sequence[str | Member]) -> None:
        """Replace the upstream file (atomically, owned by the login user) and reload."""
        new = self.upstream_file.with_name(self.upstream_file.name + ".rig-new")
        new.write_text(upstream_config(self.service, members))
        self._chown(new)
        new.replace(self.upstream_file)
        self.reload()

    def run_as_user(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``nginx ARGS`` locally as the login user (as SSH would run it, without SSH)."""
        prefix = ["runuser", "-u", self.user, "--"] if self._switch_user else []
        return subprocess.run(
            [*prefix, NGINX, *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            cwd=self.dir,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )

    def check_config(self) -> None:
        """``nginx -t -c CONF`` as the login user; NginxError with its output if it fails."""
        done = self.run_as_user("-t", "-c", str(self.config_file))
        if done.returncode != 0:
            raise NginxError(f"nginx -t failed ({done.returncode}):\n{done.stderr.strip()}")

    def reload(self) -> float:
        """``nginx -c CONF -s reload`` as the login user, then wait until new workers serve;
        the seconds that took. NginxError if nginx refused the configuration."""
        before = set(self.serving_worker_pids())
        started = time.monotonic()
        done = self.run_as_user("-c", str(self.config_file), "-s", "reload")
        if done.returncode != 0:
            raise NginxError(f"nginx -s reload failed ({done.returncode}):\n{done.stderr.strip()}")
        if not self.wait_reloaded(before):
            raise NginxError(f"nginx kept its old workers after a reload:\n{self.log()}")
        return time.monotonic() - started

    def wait_reloaded(self, before: set[int], timeout_s: float = RELOAD_TIMEOUT_S) -> bool:
        """True once a new generation of workers (none of ``before``) is serving."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = set(self.serving_worker_pids())
            if now and not now & before:
                return True
            time.sleep(0.01)
        return False


# --- /proc -------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name; None if gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in {"Z", "X"} else fields


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _children(pid: int) -> list[int]:
    return sorted(p for p in _pids() if (f := _stat(p)) is not None and int(f[1]) == pid)


def _group_members(pgid: int) -> list[int]:
    """Live nginx processes in process group ``pgid``."""
    found = []
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None and int(fields[2]) == pgid and _title(pid).startswith("nginx"):
            found.append(pid)
    return found


def _title(pid: int) -> str:
    """The process title nginx sets ("nginx: worker process is shutting down")."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
