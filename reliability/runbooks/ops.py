"""The operations each action consists of: the exact command lines sent to a node, and the
checks made from the reliability host. `plan` prints them; the executor performs them, so
what an operator reads in a plan is what a run sends.

Every command is built from an argument list with `shlex.join`; a value only a run can
know (the previous image, the saved upstream file) appears as `<...>` in its place, and the
run fills it in from what an earlier operation of the same run read (`Op.saves`). A check
made from the reliability host carries its parameters and behaviour (`Op.check`, see
checks.py), so the plan's line and the run's behaviour come from one object. Each action
builds its own operations in its module (`actions/`); the load balancer's are here.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reliability import balancers
from reliability.balancers import Membership, Server
from reliability.config import LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.runbooks.checks import Check, HttpWait

LOCAL = "local"
OpKind = Literal["run", "http", "wait", "check", "confirm", "notify", "record"]


@dataclass(frozen=True, slots=True)
class AtRun:
    """A value the run fills in when it gets there (shown as `<what>`): the output an
    earlier operation saved under `key`, or (no key) a value the planner resolves at run
    time, such as the known-good image."""

    what: str
    key: str | None = None

    def __str__(self) -> str:
        return f"<{self.what}>"


Arg = str | AtRun


@dataclass(frozen=True, slots=True)
class SecretText:
    """Standard input made of secrets, shown as `masked`: `read` gives it only when the
    operation is sent, so no plan, record or log ever holds it."""

    masked: str
    read: Callable[[], str] = field(compare=False, repr=False)

    def __str__(self) -> str:
        return self.masked


@dataclass(frozen=True, slots=True)
class Op:
    """One thing a run does. `where`: the node a command runs on, or LOCAL (the reliability
    host itself). `detail`: for `run`, the command line exactly as sent; `stdin`: what is
    written to its standard input; `note`: why, in a few words.

    For the run: `argv` is the command as words when one is an AtRun; `saves` keeps the
    command's output under that key (the first read of it, unless `latest`: a value each
    attempt makes anew, such as a new container's id); `needs` skips the operation when
    that key holds nothing (no container ran before, so none is put back); `changes`:
    sending it changes the system, so from then on the unit must be undone if the run
    fails; `may_fail`: a non-zero exit is an answer, not a failure; `check`: what a local
    operation does."""

    where: str
    kind: OpKind
    detail: str
    stdin: str | AtRun | SecretText | None = None
    note: str = ""
    argv: tuple[Arg, ...] | None = field(default=None, repr=False)
    saves: str | None = None
    needs: str | None = None
    latest: bool = False
    changes: bool = False
    may_fail: bool = False
    check: Check | None = None  # checks.py, or the module of the action it belongs to

    def shown(self) -> dict[str, str | None]:
        """The operation as a plan prints it (and `--json` gives it)."""
        stdin = None if self.stdin is None else str(self.stdin)
        return {
            "where": self.where,
            "kind": self.kind,
            "detail": self.detail,
            "stdin": stdin,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Unit:
    """What a step does on one target: a node, the load balancer, or the local host; `undo`
    is what reverses it, recorded before its first change goes out; `cleanup`, what is
    done once the whole run has succeeded (removing what the undo would have needed)."""

    target: str
    ops: list[Op]
    undo: list[Op]
    cleanup: list[Op] = field(default_factory=list)


def command(argv: Sequence[Arg]) -> str:
    """A shell command line: each literal argument quoted, each run-time value marked."""
    return " ".join(str(a) if isinstance(a, AtRun) else shlex.quote(a) for a in argv)


def run_op(
    where: str,
    argv: Sequence[Arg],
    *,
    note: str = "",
    saves: str | None = None,
    needs: str | None = None,
    changes: bool = False,
    may_fail: bool = False,
) -> Op:
    """A command op; `argv` is kept when a run-time value must be filled in later."""
    words = tuple(argv)
    later = words if any(isinstance(a, AtRun) for a in words) else None
    return Op(
        where,
        "run",
        command(words),
        note=note,
        argv=later,
        saves=saves,
        needs=needs,
        changes=changes,
        may_fail=may_fail,
    )


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- load balancer -----------------------------------------------------------------------
# The file format and the commands are the balancer's (reliability/balancers); these turn
# them into the operations a plan shows and a run sends.
def upstream_text(
    lb: LoadBalancerConfig, service: ServiceConfig, members: Sequence[tuple[NodeConfig, bool]]
) -> str:
    """The upstream file for `members` (node, serving; False: listed but taken out)."""
    servers = [
        Server(host_port(n.address, service.port), down=not up, name=n.name) for n, up in members
    ]
    return balancers.for_config(lb).render(Membership.of(service.name, servers))


def _lb_check_reload(lb_node: str, lb: LoadBalancerConfig) -> list[Op]:
    balancer = balancers.for_config(lb)
    return [
        Op(
            lb_node,
            "run",
            balancer.validate_command(),
            note="validate; on failure the old file goes back",
        ),
        Op(
            lb_node,
            "run",
            balancer.reload_command(),
            note="graceful: in-flight requests finish",
            changes=True,
        ),
    ]


def _write(lb_node: str, path: str, content: str | AtRun, note: str) -> Op:
    """Replace a file atomically: a new file beside it, renamed over it."""
    tmp = f"{path}.reliability-new"
    line = f"{command(['cat'])} > {shlex.quote(tmp)} && {command(['mv', '-f', tmp, path])}"
    needs = content.key if isinstance(content, AtRun) else None
    return Op(lb_node, "run", line, stdin=content, note=note, needs=needs, changes=True)


def upstream_key(step_id: str) -> str:
    """Where a run keeps the upstream file as it was before step `step_id` rewrote it."""
    return f"upstream@{step_id}"


def lb_write_ops(
    lb_node: str, lb: LoadBalancerConfig, content: str, *, saves: str, verify: float | None
) -> list[Op]:
    """Save the current upstream file (under `saves`), write the new one, validate, reload;
    with `verify` (seconds), check the service answers through the balancer (not after a
    drain: it may have no member left serving)."""
    ops = [
        run_op(lb_node, ["cat", lb.upstream_file], note="saved for undo", saves=saves),
        _write(lb_node, lb.upstream_file, content, "the new upstream"),
        *_lb_check_reload(lb_node, lb),
    ]
    if verify is not None:
        balancer = balancers.for_config(lb)
        check = HttpWait(balancer.url, within=verify, interval=0.05, settle=balancer.settle)
        ops.append(
            Op(LOCAL, "http", f"GET {lb.url} until 200", note="through the balancer", check=check)
        )
    return ops


def lb_restore_ops(lb_node: str, lb: LoadBalancerConfig, saved: AtRun) -> list[Op]:
    """Put a saved upstream file back byte for byte, validate, reload."""
    return [
        _write(lb_node, lb.upstream_file, saved, "byte for byte"),
        *_lb_check_reload(lb_node, lb),
    ]
