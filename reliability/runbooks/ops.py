"""The operations each action consists of: the exact command lines sent to a node, and the
checks made from the reliability host. `plan` prints them; the executor performs them, so
what an operator reads in a plan is what a run sends.

Every command is built from an argument list with `shlex.join`; a value only a run can
know (the previous image, the saved upstream file) appears as `<...>` in its place, and the
run fills it in from what an earlier operation of the same run read (`Op.saves`). A check
made from the reliability host carries its parameters and behaviour (`Op.check`, see
checks.py), so the plan's line and the run's behaviour come from one object. An `edit`
operation changes, here, a file an earlier operation read (the balancer's upstream), so the
plan shows the change and the run applies it to the live file. Each action
builds its own operations in its module (`actions/`); the load balancer's are here.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reliability import balancers
from reliability.balancers import Edit, Server
from reliability.balancers.base import EditAction
from reliability.config import LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.runbooks.checks import Check, HttpWait

LOCAL = "local"
OpKind = Literal["run", "edit", "http", "wait", "check", "confirm", "notify", "record"]


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
    operation does; `edit`: what an `edit` operation does, here, to the text an earlier one
    saved under `needs` (the result saved under `saves`)."""

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
    edit: UpstreamEdit | None = None

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
# The file format, the edits and the commands are the balancer's (reliability/balancers);
# these turn them into the operations a plan shows and a run sends.
@dataclass(frozen=True, slots=True)
class UpstreamEdit:
    """The edit of an `edit` op: the balancer's file as the run read it, with `edit`
    applied (balancers.Balancer.apply); MembershipError (a ValueError) when it cannot be."""

    lb: LoadBalancerConfig
    edit: Edit

    def apply(self, text: str) -> str:
        return balancers.for_config(self.lb).apply(text, self.edit)


def upstream_edit(
    service: ServiceConfig,
    action: EditAction,
    nodes: Sequence[NodeConfig],
) -> Edit:
    """The edit `action` of `nodes` (each at the service's port) in `service`'s block."""
    servers = tuple(Server(host_port(n.address, service.port), name=n.name) for n in nodes)
    return Edit(service.name, action, servers)


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


def _write(lb_node: str, path: str, content: AtRun, note: str) -> Op:
    """Replace a file atomically: a new file beside it, renamed over it."""
    tmp = f"{path}.reliability-new"
    line = f"{command(['cat'])} > {shlex.quote(tmp)} && {command(['mv', '-f', tmp, path])}"
    return Op(lb_node, "run", line, stdin=content, note=note, needs=content.key, changes=True)


def upstream_key(step_id: str) -> str:
    """Where a run keeps the upstream file as it was before step `step_id` rewrote it."""
    return f"upstream@{step_id}"


def lb_edit_ops(
    lb_node: str, lb: LoadBalancerConfig, edit: Edit, *, saves: str, verify: float | None
) -> list[Op]:
    """Read the live upstream file (kept under `saves` for undo), apply `edit` to it here
    (refused, with the reason, before anything is written when the file disagrees), write
    the result, validate, reload; with `verify` (seconds), check the service answers
    through the balancer (not after a drain: it may have no member left serving)."""
    balancer = balancers.for_config(lb)
    edited = f"{saves}+edit"
    ops = [
        Op(lb_node, "run", balancer.read_command(), note="saved for undo", saves=saves),
        Op(
            LOCAL,
            "edit",
            edit.shown(balancer.block_kind),
            note="on the file as read; only these server lines change",
            needs=saves,
            saves=edited,
            edit=UpstreamEdit(lb, edit),
        ),
        _write(lb_node, lb.upstream_file, AtRun("the file read, edited", edited), "edited"),
        *_lb_check_reload(lb_node, lb),
    ]
    if verify is not None:
        url = balancer.health_url
        check = HttpWait(url, within=verify, interval=0.05, settle=balancer.settle)
        shown = f"GET {url} until 200"
        ops.append(Op(LOCAL, "http", shown, note="through the balancer", check=check))
    return ops


def lb_restore_ops(
    lb_node: str, lb: LoadBalancerConfig, saved: AtRun, *, file: str | None = None
) -> list[Op]:
    """Put a saved upstream file (or another file of the balancer's: `file`) back byte for
    byte, validate, reload."""
    return [
        _write(lb_node, file or lb.upstream_file, saved, "byte for byte"),
        *_lb_check_reload(lb_node, lb),
    ]


def lb_swap_ops(
    lb_node: str, lb: LoadBalancerConfig, file: str, variant: str, key: str
) -> list[Op]:
    """Copy the prepared `variant` over `file` on the balancer's node (read, then written
    atomically as every balancer file is), validate, reload; `file` as it was is saved
    under `key` for undo (lb_restore_ops with `file`)."""
    content = AtRun(f"the contents of {variant}", f"{key}:variant")
    return [
        run_op(lb_node, ["cat", file], note="saved for undo", saves=key),
        run_op(lb_node, ["cat", variant], note="the prepared variant", saves=content.key),
        _write(lb_node, file, content, "the variant, byte for byte"),
        *_lb_check_reload(lb_node, lb),
    ]
