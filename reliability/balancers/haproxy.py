"""HAProxy: a file holding one `backend NAME` section of `server NAME ADDR check
[disabled]` lines, loaded after the main config (`haproxy -f CONFIG -f UPSTREAM`, the
backend's options come from the main config's `defaults`).

HAProxy runs in master-worker mode (`-W`, as Debian's unit runs it) and writes the
master's pid to `pid_file`. Validating is `haproxy -c` over both files; reloading is
`kill -USR2` to the master, exactly what the unit's `ExecReload` does after its own check:
the master re-executes itself on the same files, the new worker takes the listening
sockets over (no connection refused), and the old one stops accepting and finishes what
it holds, streams included. The master does not tell the signaller whether the new files
loaded (on a refusal it keeps the old worker serving), hence the check before it.
"""

from __future__ import annotations

import re
import shlex

from reliability.balancers.base import HEADER, Balancer, Membership, MembershipError, Server

DEFAULT_CONFIG = "/etc/haproxy/haproxy.cfg"
DEFAULT_PID_FILE = "/run/haproxy.pid"  # Debian's
# Keywords that open a section; anything but one `backend` in the membership file is refused.
SECTIONS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "resolvers",
        "peers",
        "userlist",
        "program",
        "mailers",
        "http-errors",
        "ring",
        "cache",
        "log-forward",
    }
)
_NAME = re.compile(r"[A-Za-z0-9._:-]+")  # what HAProxy accepts as a server or proxy name


class HAProxy(Balancer):
    kind = "haproxy"
    settle = 0.25  # the old worker stops accepting once the new one is up (~50 ms)

    @property
    def config_file(self) -> str:
        return self.lb.config_file or DEFAULT_CONFIG

    @property
    def pid_file(self) -> str:
        return self.lb.pid_file or DEFAULT_PID_FILE

    def render(self, membership: Membership) -> str:
        lines = []
        for s in membership.servers:
            if s.name is None or not _NAME.fullmatch(s.name):
                raise ValueError(f"HAProxy server {s.address}: a name is needed, not {s.name!r}")
            lines.append(f"    server {s.name} {s.address} check{' disabled' if s.down else ''}\n")
        return f"{HEADER}backend {membership.backend}\n{''.join(lines)}"

    def read_membership(self, text: str) -> Membership:
        return read_backend(text)

    def validate_command(self) -> str:
        return shlex.join(["haproxy", "-c", "-f", self.config_file, "-f", self.upstream_file])

    def reload_command(self) -> str:
        return f'kill -USR2 "$(cat {shlex.quote(self.pid_file)})"'


def read_backend(text: str) -> Membership:
    """The membership of an HAProxy backend file (see Balancer.read_membership)."""
    backend: str | None = None
    servers: list[Server] = []
    default_down = False
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in SECTIONS:
            if words[0] != "backend" or backend is not None or len(words) != 2:
                raise MembershipError(
                    f"line {number}: `{' '.join(words)}`: the file must hold one "
                    "`backend NAME` section and nothing else"
                )
            backend = words[1]
        elif backend is None:
            raise MembershipError(f"line {number}: `{words[0]}` outside a backend section")
        elif words[0] == "default-server":
            default_down = "disabled" in words[1:]
        elif words[0] == "server":
            if len(words) < 3:
                raise MembershipError(f"line {number}: `server` takes a name and an address")
            params = words[3:]
            down = "disabled" in params or (default_down and "enabled" not in params)
            servers.append(Server(words[2], down=down, name=words[1]))
    if backend is None:
        raise MembershipError("no `backend NAME` section in the file")
    return Membership.of(backend, servers)
