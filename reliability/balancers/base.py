"""The load-balancer seam: what the runbooks need from a balancer, whatever its kind.

A `Balancer` is built for one `LoadBalancerConfig` and knows its kind's file and commands:
`render` writes the membership file (one upstream or backend: which servers, which are
taken out), `read_membership` reads the live file back into the same shape, and
`validate_command` / `reload_command` are the shell lines a runbook sends to the
balancer's node, in that order, after replacing the file. Verifying goes through `url`,
steady for `settle` seconds (the old generation may route for a moment after a reload).

For a file a balancer wrote, `read_membership(render(m)) == m`. Nothing here connects to
anything: the runbooks send the commands (runbooks/ops.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from reliability.config import LoadBalancerConfig

HEADER = "# Written by reliability's runbooks; edit the runbook, not this file.\n"


@dataclass(frozen=True, slots=True)
class Server:
    """One member: `address` as the file writes it ("10.0.0.1:8000", "[::1]:8000");
    `down`: listed but taken out (nginx `down`, HAProxy `disabled`); `name`: the server's
    name where the kind has one (HAProxy: the node's name; nginx servers have none)."""

    address: str
    down: bool = False
    name: str | None = None


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


class MembershipError(ValueError):
    """The text is not one backend's membership file this balancer can read; says where
    (line numbers count from 1) and what was found."""


class Balancer(ABC):
    """One configured load balancer: its membership file and the commands that apply it."""

    kind: ClassVar[str]
    # Seconds the old generation may still route new requests after the reload command
    # returns: a verify must see the answer steady that long.
    settle: ClassVar[float]

    def __init__(self, lb: LoadBalancerConfig) -> None:
        if lb.kind != self.kind:
            raise ValueError(f"a {type(self).__name__} cannot drive a {lb.kind} balancer")
        self.lb = lb

    @property
    def upstream_file(self) -> str:
        """The membership file the runbooks rewrite (and nothing else)."""
        return self.lb.upstream_file

    @property
    def url(self) -> str:
        """Where the service answers through the balancer (what a verify asks)."""
        return str(self.lb.url)

    @abstractmethod
    def render(self, membership: Membership) -> str:
        """The whole membership file for `membership`, starting with `HEADER`."""

    @abstractmethod
    def read_membership(self, text: str) -> Membership:
        """The membership in a live file's `text`; MembershipError if it holds anything
        but one backend (comments and the kind's other directives are skipped)."""

    @abstractmethod
    def validate_command(self) -> str:
        """The shell line that checks the whole configuration, new file included, without
        applying it: exit 0 only if the balancer would load it."""

    @abstractmethod
    def reload_command(self) -> str:
        """The shell line that makes the running balancer load its files gracefully:
        requests and streams in flight finish on the old generation."""
