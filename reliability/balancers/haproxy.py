"""HAProxy: a file of `backend NAME` sections (and whatever other sections the operator
keeps there) with `server NAME ADDR [PARAMS] [disabled]` lines, loaded after the main
config (`haproxy -f CONFIG -f UPSTREAM`; a backend's options may come from the main
config's `defaults`).

Marking down appends ` disabled` after a server's last parameter (or turns its `enabled`
into `disabled`); marking up removes `disabled` (or writes `enabled` where the section's
`default-server` disables). A new server line (`server NODE ADDR check`) goes after the
section's last server line, with its indentation. Nothing else in the file changes.

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

from reliability.balancers.base import Balancer, Block, MembershipError, Server, ServerLine

DEFAULT_CONFIG = "/etc/haproxy/haproxy.cfg"
DEFAULT_PID_FILE = "/run/haproxy.pid"  # Debian's
# Keywords that open a section.
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
_WORD = re.compile(r"\S+")
_INDENT = "    "
MAX_WEIGHT = 256


class HAProxy(Balancer):
    kind = "haproxy"
    block_kind = "backend"
    settle = 0.25  # the old worker stops accepting once the new one is up (~50 ms)

    @property
    def config_file(self) -> str:
        return self.lb.config_file or DEFAULT_CONFIG

    @property
    def pid_file(self) -> str:
        return self.lb.pid_file or DEFAULT_PID_FILE

    def blocks(self, text: str) -> dict[str, Block]:
        return read_backends(text)

    def server_text(self, server: Server) -> str:
        if server.name is None or not _NAME.fullmatch(server.name):
            raise MembershipError(
                f"HAProxy server {server.address}: a name is needed, not {server.name!r}"
            )
        weight = "" if server.weight is None else self.weight_text(server.weight)
        return f"server {server.name} {server.address} check{weight}"

    def weight_text(self, weight: int) -> str:
        if not 0 <= weight <= MAX_WEIGHT:
            raise MembershipError(f"HAProxy weights are 0 to {MAX_WEIGHT}, not {weight}")
        return f" weight {weight}"

    def validate_command(self) -> str:
        return shlex.join(["haproxy", "-c", "-f", self.config_file, "-f", self.upstream_file])

    def reload_command(self) -> str:
        return f'kill -USR2 "$(cat {shlex.quote(self.pid_file)})"'


class _Section:
    """A backend being read: its servers and the last line that belongs to it."""

    def __init__(self, name: str, line: int, end: int) -> None:
        self.name, self.line = name, line
        self.servers: list[ServerLine] = []
        self.default_down = False
        self.default_weight: int | None = None  # the section's `default-server weight`
        self.last_end = end  # after the section's last statement line (its header at first)
        # After the last server line, and its indentation, once one is seen.
        self.server_end: int | None = None
        self.server_indent = _INDENT

    def block(self, text: str) -> Block:
        at = self.last_end if self.server_end is None else self.server_end
        before = "" if text[:at].endswith("\n") else "\n"
        return Block(self.name, self.line, tuple(self.servers), at, self.server_indent, before)


def read_backends(text: str) -> dict[str, Block]:
    """Every `backend` section of an HAProxy file, by name (other sections are left alone).
    MembershipError for a statement outside any section, a backend without one name, a
    `server` without a name and an address, or two backends of a name."""
    found: dict[str, Block] = {}
    section: _Section | None = None
    in_other = False
    offset = 0
    for number, raw in enumerate(text.splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(raw)
        body = raw.split("#", 1)[0]
        words = [(m[0], (start + m.start(), start + m.end())) for m in _WORD.finditer(body)]
        if not words:
            continue
        keyword = words[0][0]
        if keyword in SECTIONS:
            if section is not None:
                found[section.name] = section.block(text)
            section, in_other = None, keyword != "backend"
            if keyword == "backend":
                if len(words) != 2:
                    raise MembershipError("`backend` takes one name", number)
                if words[1][0] in found:
                    raise MembershipError(f"a second `backend {words[1][0]}`", number)
                section = _Section(words[1][0], number, offset)
            continue
        if section is None:
            if in_other:
                continue  # a line of another section: not ours to read
            raise MembershipError(f"`{keyword}` outside a section", number)
        section.last_end = offset
        if keyword == "default-server":
            section.default_down = "disabled" in [w for w, _ in words[1:]]
            section.default_weight = _weight(words, 1, number)[0]
        elif keyword == "server":
            if len(words) < 3:
                raise MembershipError("`server` takes a name and an address", number)
            section.servers.append(_server_line(words, section, number, start, raw))
            section.server_end, section.server_indent = offset, raw[: len(raw) - len(raw.lstrip())]
    if section is not None:
        found[section.name] = section.block(text)
    return found


Words = list[tuple[str, tuple[int, int]]]


def _weight(words: Words, first: int, number: int) -> tuple[int | None, tuple[int, int] | None]:
    """The `weight N` among words[first:] and the span a new weight replaces (the blanks
    before `weight` to the end of N); (None, None) without one."""
    params = [w for w, _ in words[first:]]
    if "weight" not in params:
        return None, None
    i = first + params.index("weight")
    if i + 1 >= len(words) or not words[i + 1][0].isdigit():
        raise MembershipError("`weight` takes a whole number", number)
    return int(words[i + 1][0]), (words[i - 1][1][1], words[i + 1][1][1])


def _server_line(words: Words, section: _Section, number: int, start: int, raw: str) -> ServerLine:
    params = [w for w, _ in words[3:]]
    default_down = section.default_down
    down = "disabled" in params or (default_down and "enabled" not in params)
    after_last = words[-1][1][1]
    weight, at = _weight(words, 3, number)
    weight_at = at or (after_last, after_last)
    if weight is None:
        weight = section.default_weight  # what HAProxy gives it; a new weight is its own
    server = Server(
        words[2][0], down=down, name=words[1][0], weight=weight, backup="backup" in params
    )

    def word(name: str) -> tuple[int, int]:
        i = 3 + params.index(name)
        return words[i - 1][1][1], words[i][1][1]  # the word and the blanks before it

    mark_down = mark_up = None
    if not down:
        if "enabled" in params:
            mark_down = (*word("enabled"), "" if default_down else " disabled")
        else:
            mark_down = (after_last, after_last, " disabled")
    elif "disabled" in params:
        mark_up = (*word("disabled"), " enabled" if default_down else "")
    else:
        mark_up = (after_last, after_last, " enabled")
    return ServerLine(server, number, (start, start + len(raw)), mark_down, mark_up, weight_at)
