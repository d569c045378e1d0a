"""The load-balancer seam: what the runbooks need from a balancer, whatever its kind.

A `Balancer` is built for one `LoadBalancerConfig` and knows its kind's file and commands.
The membership file is the operator's: it may hold several upstreams (nginx) or backends
(HAProxy), weights, `max_fails`, `backup`, comments, keepalive. A runbook never rewrites
it whole: it reads the live file and applies an `Edit` (mark a server down or up, add one,
remove one, switch the block to a given list), which changes only the server lines the
edit names and keeps every other byte (`apply`). What the edit cannot reconcile with the
live file (marking down a server the block does not list, adding one it lists, a block
that is not there, a file it cannot parse) is refused with a `MembershipError` that says
where and why, before anything is written. `read_membership` reads one block's servers.

`validate_command` / `reload_command` are the shell lines a runbook sends to the balancer's
node, in that order, after replacing the file. Verifying goes through `health_url`, steady
for `settle` seconds (the old generation may route for a moment after a reload). Nothing
here connects to anything: the runbooks send the commands (runbooks/ops.py).
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from reliability.config import LoadBalancerConfig


@dataclass(frozen=True, slots=True)
class Server:
    """One member: `address` as the file writes it ("10.0.0.1:8000", "[::1]:8000");
    `down`: listed but taken out (nginx `down`, HAProxy `disabled`); `name`: the server's
    name where the kind has one (HAProxy: the node's name; nginx servers have none);
    `weight`: as the file gives it (nginx `weight=N`, HAProxy `weight N`), or to write;
    `backup`: sent requests only when no other server is up (read, never written)."""

    address: str
    down: bool = False
    name: str | None = None
    # Its share against the others' (None: the kind's default, 1); not part of its identity.
    weight: int | None = field(default=None, compare=False)
    backup: bool = field(default=False, compare=False)

    @property
    def weighs(self) -> int:
        """Its weight as the balancer weighs it: the kind's default, 1, when none is given."""
        return 1 if self.weight is None else self.weight


@dataclass(frozen=True, slots=True)
class Membership:
    """The servers of one upstream (nginx) or backend (HAProxy), named `backend`, in order."""

    backend: str
    servers: tuple[Server, ...]

    @classmethod
    def of(cls, backend: str, servers: Sequence[Server]) -> Membership:
        return cls(backend, tuple(servers))

    def serving(self) -> list[Server]:
        return [s for s in self.servers if not s.down]

    def taken_out(self) -> list[Server]:
        return [s for s in self.servers if s.down]

    def share(self, addresses: Collection[str]) -> float:
        """The share of the block's requests the servers at `addresses` get: their weights
        over the weights of every server that takes requests (not down, not a backup; the
        kind's default weight is 1). 0 when none takes any."""
        taking = [s for s in self.servers if not s.down and not s.backup]
        total = sum(s.weighs for s in taking)
        ours = sum(s.weighs for s in taking if s.address in addresses)
        return ours / total if total else 0.0


class MembershipError(ValueError):
    """The live file cannot be read, or an edit cannot be applied to it; says where (`line`,
    counting from 1, when one line is to blame) and why."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.line = line


Splice = tuple[int, int, str]  # replace text[start:end] by the string


@dataclass(frozen=True, slots=True)
class ServerLine:
    """One server statement of a block as the file holds it. `line`: where it starts;
    `remove`: the span that removing it deletes (its whole line(s) with their comment when
    nothing else is on them); `mark_down` / `mark_up`: the splices that take it out or put
    it back, parameters and comments kept (None: it already is); `weight_at`: the span a
    new weight replaces (its weight setting, or an empty span after the last parameter)."""

    server: Server
    line: int
    remove: tuple[int, int]
    mark_down: Splice | None
    mark_up: Splice | None
    weight_at: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Block:
    """One upstream or backend of a live file: its servers, and where a new server line
    goes (after the last server line, with its indentation) as a splice point and the
    text around the new line."""

    name: str
    line: int
    servers: tuple[ServerLine, ...]
    add_at: int
    indent: str
    add_before: str = ""  # what goes before the new lines (a newline at an unended file)


EditAction = Literal["down", "up", "add", "remove", "switch", "weight"]


@dataclass(frozen=True, slots=True)
class Edit:
    """What one step changes in block `backend`: mark `servers` down or up, add them (each
    `name` is the node's, shown in the plan and written where the kind names servers; one
    listed but down is marked up on its own line),
    remove them, or switch the block to exactly them (lines of others removed, those kept
    put back up with their parameters, the missing ones added), or set each one's
    `weight` (a canary's share of the traffic; one not listed yet is added with it)."""

    backend: str
    action: EditAction
    servers: tuple[Server, ...]

    def shown(self, block_kind: str) -> str:
        """The edit as a plan shows it: "mark gpu-1 (10.0.0.1:8000) down in upstream chat"."""
        names = ", ".join(f"{s.name} ({s.address})" if s.name else s.address for s in self.servers)
        where = f"{block_kind} {self.backend}"
        return {
            "down": f"mark {names} down in {where}",
            "up": f"mark {names} up in {where}",
            "add": f"add {names} to {where}, after its last server line",
            "remove": f"remove {names} from {where}",
            "switch": f"switch {where} to {names or 'no server'}; other server lines removed",
            "weight": "set (adding where missing) weights in "
            + where
            + ": "
            + ", ".join(f"{s.name or s.address} {s.weight}" for s in self.servers),
        }[self.action]


class Balancer(ABC):
    """One configured load balancer: its membership file and the commands that apply it."""

    kind: ClassVar[str]
    block_kind: ClassVar[str]  # what the kind calls a block of servers ("upstream")
    # Seconds the old generation may still route new requests after the reload command
    # returns: a verify must see the answer steady that long.
    settle: ClassVar[float]

    def __init__(self, lb: LoadBalancerConfig) -> None:
        if lb.kind != self.kind:
            raise ValueError(f"a {type(self).__name__} cannot drive a {lb.kind} balancer")
        self.lb = lb

    @property
    def upstream_file(self) -> str:
        """The membership file the runbooks edit (and nothing else)."""
        return self.lb.upstream_file

    @property
    def health_url(self) -> str:
        """What a verify through the balancer asks (200 while a member serves)."""
        return str(self.lb.health_url)

    @abstractmethod
    def blocks(self, text: str) -> dict[str, Block]:
        """Every upstream or backend of a live file's `text`, by name; MembershipError if
        the text cannot be read."""

    @abstractmethod
    def server_text(self, server: Server) -> str:
        """A new server statement (no indentation, no newline), serving (with its weight
        when it has one)."""

    @abstractmethod
    def weight_text(self, weight: int) -> str:
        """A weight setting as it follows a server's other parameters (" weight=3");
        MembershipError for a weight the kind refuses."""

    def block(self, text: str, backend: str) -> Block:
        """Block `backend` of `text`; MembershipError naming the blocks there if absent."""
        blocks = self.blocks(text)
        if backend not in blocks:
            found = ", ".join(f"{n} (line {b.line})" for n, b in blocks.items()) or "none"
            raise MembershipError(
                f"no `{self.block_kind} {backend}` in {self.upstream_file} (found: {found})"
            )
        return blocks[backend]

    def read_membership(self, text: str, backend: str | None = None) -> Membership:
        """The servers of block `backend` of a live file (without a name: its only block)."""
        if backend is None:
            blocks = self.blocks(text)
            if len(blocks) != 1:
                found = ", ".join(f"{n} (line {b.line})" for n, b in blocks.items()) or "nothing"
                raise MembershipError(f"expected one {self.block_kind} block, found: {found}")
            (chosen,) = blocks.values()
        else:
            chosen = self.block(text, backend)
        return Membership.of(chosen.name, [s.server for s in chosen.servers])

    def apply(self, text: str, edit: Edit) -> str:
        """`text` with `edit` applied: only the server lines it names change, every other
        byte stays. MembershipError (nothing applied) when the live file disagrees."""
        block = self.block(text, edit.backend)
        splices: list[Splice] = []
        added: list[Server] = []
        if edit.action == "switch":
            wanted = {s.address for s in edit.servers}
            for s in block.servers:
                if s.server.address not in wanted:
                    splices.append((*s.remove, ""))
            for server in edit.servers:
                found = self._one(block, server.address, must=False)
                if found is None:
                    added.append(server)
                elif found.mark_up is not None:
                    splices.append(found.mark_up)
        else:
            for server in edit.servers:
                found = self._one(block, server.address, must=edit.action not in ("add", "weight"))
                if edit.action == "weight" and found is None:
                    self._name_free(block, server)
                    added.append(server)  # a canary's new server joins with its weight
                    continue
                if edit.action == "add":
                    if found is not None and found.mark_up is not None:
                        # Listed but taken out (a node that failed once and is back as a
                        # standby): it serves again from its own line, parameters kept.
                        splices.append(found.mark_up)
                        continue
                    if found is not None:
                        raise MembershipError(
                            f"{server.address} is already in {self.block_kind} {block.name}",
                            found.line,
                        )
                    self._name_free(block, server)
                    added.append(server)
                    continue
                assert found is not None
                if edit.action == "weight":
                    if server.weight is None:
                        raise MembershipError(f"no weight given for {server.address}")
                    splices.append((*found.weight_at, self.weight_text(server.weight)))
                elif edit.action == "remove":
                    splices.append((*found.remove, ""))
                elif change := found.mark_down if edit.action == "down" else found.mark_up:
                    splices.append(change)  # None: it already is
        if added:
            lines = "".join(f"{block.indent}{self.server_text(s)}\n" for s in added)
            splices.append((block.add_at, block.add_at, block.add_before + lines))
        return _spliced(text, splices)

    def _one(self, block: Block, address: str, *, must: bool) -> ServerLine | None:
        found = [s for s in block.servers if s.server.address == address]
        if len(found) > 1:
            lines = ", ".join(str(s.line) for s in found)
            raise MembershipError(
                f"{address} is listed {len(found)} times in {self.block_kind} {block.name} "
                f"(lines {lines}): which one the edit means is unclear",
                found[1].line,
            )
        if not found and must:
            listed = ", ".join(s.server.address for s in block.servers) or "no server"
            raise MembershipError(
                f"{address} is not in {self.block_kind} {block.name} (it lists {listed})",
                block.line,
            )
        return found[0] if found else None

    def _name_free(self, block: Block, server: Server) -> None:
        """Where the kind names servers, a new one must not reuse a name."""
        if server.name is None:
            return
        for s in block.servers:
            if s.server.name == server.name:
                raise MembershipError(
                    f"a server named {server.name} ({s.server.address}) is already in "
                    f"{self.block_kind} {block.name}",
                    s.line,
                )

    def read_command(self) -> str:
        """The shell line that prints the live membership file (what every edit reads)."""
        return shlex.join(["cat", self.upstream_file])

    @abstractmethod
    def validate_command(self) -> str:
        """The shell line that checks the whole configuration, new file included, without
        applying it: exit 0 only if the balancer would load it."""

    @abstractmethod
    def reload_command(self) -> str:
        """The shell line that makes the running balancer load its files gracefully:
        requests and streams in flight finish on the old generation."""


def _spliced(text: str, splices: list[Splice]) -> str:
    """`text` with each splice applied; they never overlap (one per server line, and the
    additions after the last one)."""
    out, at = [], 0
    for start, end, new in sorted(splices, key=lambda s: (s[0], s[1])):
        out += [text[at:start], new]
        at = end
    return "".join([*out, text[at:]])


def line_of(text: str, offset: int) -> int:
    """The line number (from 1) of `offset` in `text`."""
    return text.count("\n", 0, offset) + 1


def whole_lines(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of the lines holding text[start:end], newline included, when nothing but
    blanks comes before it on its first line and nothing but blanks or a comment after it
    on its last; else None."""
    first = text.rfind("\n", 0, start) + 1
    last = text.find("\n", end)
    after = len(text) if last < 0 else last + 1
    rest = text[end : len(text) if last < 0 else last].strip()
    if text[first:start].strip() or (rest and not rest.startswith("#")):
        return None
    return first, after
