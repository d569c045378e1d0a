"""A real HAProxy load balancer on one node of the rig, run as the fleet's login user.

``HAProxyBalancer(fleet, "lb-1", service="chat", members=["127.0.1.1:8000"])`` writes, in
a directory of its own under ``fleet.dir`` owned by the login user, a main config and the
service's backend file, and runs HAProxy listening on the LB node's address (port 8080)
the way Debian's unit does, without systemd: master-worker mode, ``haproxy -W -f CONF -f
BACKEND -p PIDFILE`` (plus a master CLI socket, ``-S``, the rig reads its workers from).
Every path it writes (pid, sockets, log) is in that directory, so the login user over SSH
can do exactly what a runbook does on a real balancer: ``cat`` the backend file, replace
it (``cat > F.reliability-new && mv -f F.reliability-new F``), ``haproxy -c -f CONF -f
BACKEND`` and ``kill -USR2 "$(cat PIDFILE)"``: the master re-executes itself on the
files, the new worker takes the listening sockets over, the old one finishes what it holds.

The proxy mirrors the rig's nginx: HTTP/1.1 to the members, responses streamed, hour-long
timeouts, a failed connect, empty answer, 502 or 503 tried again on another member (at
most ``PROXY_TRIES`` in all); every path goes to the members as it is (``GET /`` answers
what the engine's ``/`` does: a runbook verifies through ``health_url``); every answer
from a member carries ``x-upstream-addr``, the member that answered. Access logs go to the
master's stderr, in ``haproxy.out``.

The backend file is the kind an operator keeps: ``balance``, a comment, each server with a
weight, ``http-reuse``, and a second backend no runbook may touch (``UNRELATED``).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from reliability.testing.balancer import (
    PROXY_TRIES,
    BalancerError,
    Member,
    RigBalancer,
    as_member,
    children,
)

HAPROXY = "/usr/sbin/haproxy"
UNRELATED = "rig-unrelated"  # the backend file's second backend
CLI_TIMEOUT_S = 2.0
__all__ = [
    "HAPROXY",
    "UNRELATED",
    "HAProxyBalancer",
    "HAProxyError",
    "Member",
    "missing_requirement",
]


class HAProxyError(BalancerError):
    """HAProxy cannot be set up, started or reloaded here; says why (with its log)."""


def missing_requirement() -> str | None:
    """None when a balancer can start on this machine, else what is missing."""
    return HAProxyBalancer.missing_requirement()


def main_config(*, directory: Path, service: str, address: str, port: int, threads: int) -> str:
    """The main HAProxy config; the backend (``service``) is in its own file, after it."""
    return f"""\
# The rig's load balancer (reliability/testing/haproxy.py). Runs as the login user.
global
    log stderr format raw local0 info
    nbthread {threads}
    stats socket {directory}/admin.sock mode 600 level admin

defaults
    mode http
    log global
    option httplog
    option forwardfor
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout http-request 10s
    timeout http-keep-alive 10s
    # A refused connect, an empty answer, 502 or 503: tried on another member.
    retries {PROXY_TRIES - 1}
    option redispatch 1
    retry-on conn-failure empty-response 502 503
    default-server inter 1s fall 2 rise 1

frontend {service}-in
    bind {address}:{port}
    http-response set-header x-upstream-addr %[bc_dst]:%[bc_dst_port]
    default_backend {service}
"""


class HAProxyBalancer(RigBalancer):
    """HAProxy on ``node`` of a started ``fleet``, balancing ``service``; a context manager.
    ``workers`` is the worker's thread count (HAProxy runs one worker process)."""

    kind = "haproxy"
    binary = HAPROXY
    error = HAProxyError

    def __enter__(self) -> HAProxyBalancer:
        return self.start()

    def start(self) -> HAProxyBalancer:
        """Write the files, check them as the login user, run HAProxy until it serves."""
        super().start()
        return self

    # --- where things are -----------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def upstream_file(self) -> Path:
        return self.dir / f"backend-{self.service}.cfg"

    @property
    def pid_file(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def master_socket(self) -> Path:
        return self.dir / "master.sock"

    def lb_config(self, service: str | None = None) -> dict[str, str]:
        return {**super().lb_config(service), "pid_file": str(self.pid_file)}

    def render(self, members: Sequence[str | Member]) -> str:
        """The backend file as an operator keeps it (see the module's docstring)."""
        lines = []
        for member in members:
            address, down = as_member(member)
            name = self._server_name(address)
            lines.append(
                f"    server {name} {address} check weight 2{' disabled' if down else ''}\n"
            )
        return (
            "# The rig's backends, kept by hand: runbooks change server lines only.\n"
            f"backend {self.service}\n"
            "    balance roundrobin\n"
            "    # the serving pool; weights are the operator's\n"
            f"{''.join(lines)}"
            "    http-reuse safe\n"
            "\n"
            "# Another service on this balancer: no runbook of this one may touch it.\n"
            f"backend {UNRELATED}\n"
            "    server unrelated 127.0.0.1:9  # nothing listens: never proxied to\n"
        )

    def main_config(self) -> str:
        return main_config(
            directory=self.dir,
            service=self.service,
            address=self.address,
            port=self.port,
            threads=self.workers,
        )

    def launch_args(self) -> list[str]:
        # Debian's unit runs `haproxy -Ws -f $CONFIG -p $PIDFILE`; -Ws only adds systemd's
        # readiness notice, which nothing reads here.
        return [
            "-W",
            "-f",
            str(self.config_file),
            "-f",
            str(self.upstream_file),
            "-p",
            str(self.pid_file),
            "-S",
            f"{self.master_socket},mode,600",
        ]

    # --- processes ------------------------------------------------------------------------

    def _workers(self) -> list[tuple[int, bool]]:
        master = self.pid
        if master is None:
            return []
        alive = set(children(master))
        if not alive:
            return []
        current = self._current_workers()
        return [(pid, pid in current) for pid in sorted(alive)]

    def _current_workers(self) -> set[int]:
        """The workers the master CLI lists as current (not under `# old workers`)."""
        try:
            text = self.master_cli("show proc")
        except OSError:
            return set()
        current: set[int] = set()
        section = ""
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
                continue
            fields = line.split()
            if len(fields) >= 2 and fields[1] == "worker" and "old" not in section:
                current.add(int(fields[0]))
        return current

    def master_cli(self, command: str) -> str:
        """One command on the master CLI socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CLI_TIMEOUT_S)
            s.connect(str(self.master_socket))
            s.sendall(command.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)  # the master answers, then closes
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def reloads(self) -> int:
        """How many times the master reloaded (its `show proc` count)."""
        match = re.search(r"^\d+\s+master\s+(\d+)", self.master_cli("show proc"), re.MULTILINE)
        if match is None:
            raise HAProxyError(f"the master CLI did not list the master:\n{self.log()}")
        return int(match[1])

    # --- the runbook's commands -------------------------------------------------------------

    def check_config(self) -> None:
        """``haproxy -c -f CONF -f BACKEND`` as the login user; HAProxyError if it fails."""
        done = self.shell_as_user(["sh", "-c", self.balancer.validate_command()])
        if done.returncode != 0:
            raise HAProxyError(
                f"haproxy -c failed ({done.returncode}):\n{(done.stdout + done.stderr).strip()}"
            )

    def reload(self) -> float:
        """``kill -USR2 "$(cat PIDFILE)"`` as the login user, then wait until a new worker
        serves; the seconds that took. HAProxyError if the master kept the old one."""
        before = set(self.serving_worker_pids())
        started = time.monotonic()
        done = self.shell_as_user(["sh", "-c", self.balancer.reload_command()])
        if done.returncode != 0:
            raise HAProxyError(f"reload failed ({done.returncode}):\n{done.stderr.strip()}")
        if not self.wait_reloaded(before):
            raise HAProxyError(f"haproxy kept its old worker after a reload:\n{self.log()}")
        return time.monotonic() - started
