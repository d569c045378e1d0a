"""A remote node's kernel log, read incrementally over SSH for the XIDs it holds.

`KernelLog(command)` keeps, per node, how to read its log and how far it has read. Each
`script(source)` is one POSIX sh script that sends only what is new since the last read:

* journal (`journalctl -k -o short-monotonic --show-cursor`): after the cursor of the last
  read; a cursor journalctl refuses is dropped and the read made again from the tail.
  `-k` is this boot only, so after a reboot the new boot is read from its start.
* dmesg: its lines are filtered on the node by `awk` against the monotonic timestamp of
  the last read (lines at that very timestamp cross again and are told apart by text).
  A new boot id, or timestamps that went back, is a reboot: the tail of the new boot.

The first read after start takes only the newest `KEEP_LINES` lines, every read keeps the
newest (never the oldest) of what it selected, each line cut to `MAX_LINE` characters, so
what crosses SSH stays far below the pool's output limit. Lines carry seconds since boot;
the node's boot time (`btime` of /proc/stat) makes them Unix times.

`command` None tries journalctl, then dmesg, and keeps the first that reads; a configured
command (`sudo -n dmesg`) is the only one tried. When none can be read, `read` returns the
problem in words (permission denied, restricted, not installed) for the collector to
report: XID detection is off on that node until the log is readable again.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Literal, cast

from reliability.collect.gpu_common import KernelXid, xid_of
from reliability.config import kernel_log_program

KEEP_LINES = 1000
MAX_LINE = 512
MARK = "==reliability=="
_STAMPED = re.compile(r"^\[\s*(?P<at>\d+\.\d+)\]\s?(?P<text>.*)$")
_CURSOR = "-- cursor: "
_UNREADABLE_JOURNAL = (
    "No journal files were found",
    "No journal files were opened",
    "not seeing messages from other users",
)
_BAD_CURSOR = "Failed to seek to cursor"
# The boot id and boot time (Unix seconds) of the node, as the first line of every read.
_BOOT = (
    "b=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null); "
    "t=$(awk '$1 == \"btime\" {print $2}' /proc/stat 2>/dev/null); "
    f'echo "{MARK} boot $b $t"'
)
# Keeps the newest `keep` lines of those at or after `since` (all of them when the
# timestamps went back: a reboot), then the exit status of the command before it.
_DMESG_FILTER = f"""
function emit(ring, count,   i) {{
  if (count > keep) print "{MARK} dropped " (count - keep)
  for (i = (count > keep ? count - keep : 0); i < count; i++) print ring[i % keep]
}}
/^\\[ *[0-9]+\\.[0-9]+\\]/ {{
  at = substr($0, index($0, "[") + 1) + 0; line = substr($0, 1, width); seen = 1
  newest = at; all[n++ % keep] = line
  if (at >= since) fresh[f++ % keep] = line
  next
}}
index($0, "{MARK} rc ") == 1 {{ rc = $0; next }}
!seen && pre++ < 20 {{ print substr($0, 1, width) }}
END {{
  if (seen && newest < since) {{ print "{MARK} back"; emit(all, n) }} else emit(fresh, f)
  if (rc != "") print rc
}}
"""


@dataclass(frozen=True, slots=True)
class Source:
    """One way to read the log: `kind` journalctl or dmesg, and the words that run it."""

    kind: Literal["journalctl", "dmesg"]
    words: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(self.words)


DEFAULT_SOURCES = (Source("journalctl", ("journalctl",)), Source("dmesg", ("dmesg",)))


def sources_of(command: str | None) -> tuple[Source, ...]:
    """The sources to try for a configured `kernel_log_command` (None: the defaults)."""
    if command is None:
        return DEFAULT_SOURCES
    words = tuple(shlex.split(command))
    kind = cast(Literal["journalctl", "dmesg"], kernel_log_program(words))
    return (Source(kind, words),)


@dataclass(frozen=True, slots=True)
class KernelRead:
    """What one read gave: the new XIDs, or `problem` (why the log cannot be read);
    `again` when the read must be made again at once (a cursor journalctl refused)."""

    xids: list[KernelXid] = field(default_factory=list)
    problem: str | None = None
    again: bool = False


@dataclass(slots=True)
class _Output:
    boot: str = ""
    booted_at: float | None = None
    rc: int | None = None
    back: bool = False
    dropped: int = 0
    cursor: str | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


def _parse(stdout: str) -> _Output:
    out = _Output()
    for line in stdout.splitlines():
        stamped = _STAMPED.match(line)
        if stamped:
            out.lines.append((float(stamped["at"]), line))
        elif line.startswith(f"{MARK} "):
            word, _, rest = line[len(MARK) + 1 :].partition(" ")
            if word == "boot":
                boot, _, booted = rest.partition(" ")
                out.boot = boot.strip()
                out.booted_at = float(booted) if booted.strip().isdigit() else None
            elif word == "rc" and rest.strip().lstrip("-").isdigit():
                out.rc = int(rest)
            elif word == "back":
                out.back = True
            elif word == "dropped" and rest.strip().isdigit():
                out.dropped = int(rest)
        elif line.startswith(_CURSOR):
            out.cursor = line[len(_CURSOR) :].strip()
        elif line.strip() and line.strip() != "-- No entries --":
            out.other.append(line.strip())
    return out


class KernelLog:
    """How far one node's kernel log has been read; see the module docstring.

    Not thread-safe: the collector reads a node's log from one collection at a time.
    """

    def __init__(self, command: str | None = None) -> None:
        self.sources = sources_of(command)
        self.chosen: Source | None = None
        self.cursor: str | None = None  # journalctl's, of the newest line read
        self.since: float | None = None  # dmesg: seconds since boot of the newest line read
        self._at_since: set[str] = set()
        self.boot: str | None = None
        self.dropped = 0  # lines never read because more came between two reads

    def order(self) -> list[Source]:
        """The sources to try this read: the one that worked last, then the others."""
        return sorted(self.sources, key=lambda s: s != self.chosen)

    def script(self, source: Source) -> str:
        """The shell script that reads what is new from `source`."""
        if source.kind == "journalctl":
            where = (
                f"--after-cursor={shlex.quote(self.cursor)}"
                if self.cursor is not None
                else f"-n {KEEP_LINES}"
            )
            run = f"{source.command} -k -o short-monotonic --no-pager --show-cursor {where}"
            pipe = f"tail -n {KEEP_LINES + 2} | cut -c -{MAX_LINE}"
        else:
            run = source.command
            pipe = (
                f'awk -v since="$s" -v keep={KEEP_LINES} -v width={MAX_LINE} '
                f"{shlex.quote(_DMESG_FILTER)}"
            )
        since = "-1" if self.since is None else repr(self.since)
        lines = [_BOOT]
        if source.kind == "dmesg":
            known = shlex.quote(self.boot or "")
            lines.append(f's={shlex.quote(since)}; [ "$b" = {known} ] || s=-1')
        lines.append(f'{{ {run} 2>&1; echo "{MARK} rc $?"; }} | {pipe}')
        return "\n".join(lines) + "\n"

    def read(self, source: Source, stdout: str) -> KernelRead:
        """Take the output of `script(source)`: the XIDs not read before, or a problem."""
        out = _parse(stdout)
        problem = self._problem(source, out)
        if problem == _BAD_CURSOR:
            self.cursor = None
            return KernelRead(again=True)
        if problem is not None:
            if self.chosen == source:
                self.chosen = None
            return KernelRead(problem=problem)
        self.chosen = source
        rebooted = bool(self.boot is not None and out.boot and out.boot != self.boot) or out.back
        if self.since is not None and not rebooted:  # a first read takes only the tail
            self.dropped += out.dropped
        fresh = self._fresh(source, out, rebooted=rebooted)
        if out.boot:
            self.boot = out.boot
        booted_at = out.booted_at
        xids = []
        for at, line in fresh:
            xid = xid_of(line, at if booted_at is None else booted_at + at)
            if xid is not None:
                xids.append(xid)
        return KernelRead(xids=xids)

    def _problem(self, source: Source, out: _Output) -> str | None:
        said = "; ".join(out.other)[:300]
        if out.rc is None:
            return f"`{source.command}` gave no exit status: {said or 'no output'}"
        if out.rc != 0:
            if source.kind == "journalctl" and _BAD_CURSOR in said and self.cursor is not None:
                return _BAD_CURSOR
            if out.rc == 127:
                return f"`{source.command}` is not installed: {said}"
            return f"`{source.command}` failed (exit {out.rc}): {said or 'no output'}"
        if source.kind == "journalctl" and not out.lines:
            if any(text in said for text in _UNREADABLE_JOURNAL):
                return f"`{source.command}` shows no kernel messages: {said}"
            if self.cursor is None:
                return f"`{source.command}` holds no kernel messages of this boot"
        return None

    def _fresh(self, source: Source, out: _Output, *, rebooted: bool) -> list[tuple[float, str]]:
        """The lines not read before; advances the cursor or timestamp."""
        if source.kind == "journalctl":
            if out.cursor:
                self.cursor = out.cursor
            return out.lines
        if rebooted:
            self.since, self._at_since = None, set()
        since, seen = self.since, self._at_since
        fresh = [
            (at, line)
            for at, line in out.lines
            if since is None or at > since or (at == since and line not in seen)
        ]
        if out.lines:
            newest = max(at for at, _ in out.lines)
            if since is None or newest > since:
                self.since, self._at_since = newest, set()
            self._at_since |= {line for at, line in out.lines if at == newest}
        return fresh
