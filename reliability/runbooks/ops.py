"""The operations each action consists of: the exact command lines sent to a node, and the
checks made from the reliability host. `plan` prints them; the executor performs them, so
what an operator reads in a plan is what a run sends.

Every command is built from an argument list with `shlex.join`; a value only a run can
know (the previous image, the saved upstream file) appears as `<...>` in its place, and the
run fills it in from what an earlier operation of the same run read (`Op.saves`). A check
made from the reliability host carries its parameters (`Op.check`), so the plan's line and
the run's behaviour come from one object.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from reliability import balancers
from reliability.balancers import Membership, Server
from reliability.config import LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.durations import format_duration

LOCAL = "local"
OpKind = Literal["run", "http", "wait", "confirm", "notify", "record"]


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


# --- checks made from the reliability host ----------------------------------------------
@dataclass(frozen=True, slots=True)
class HttpWait:
    """Ask `url` every `interval` until it answers `status` (and `body` in it), `within`;
    then it must keep answering so for `settle` seconds (a balancer's old workers route for
    a moment after a reload)."""

    url: str
    within: float
    method: str = "GET"
    status: int = 200
    body: str | None = None
    interval: float = 1.0
    settle: float = 0.0


@dataclass(frozen=True, slots=True)
class HttpSoak:
    """Ask `url` every `interval` for `soak`; fail above `max_error_ratio` failures."""

    url: str
    soak: float
    interval: float
    max_error_ratio: float
    method: str = "GET"
    status: int = 200
    body: str | None = None


@dataclass(frozen=True, slots=True)
class FirstToken:
    """A streamed one-token chat completion on `base` whose first token comes in `ttft`."""

    base: str
    model: str | None
    ttft: float


@dataclass(frozen=True, slots=True)
class Drained:
    """Until the engine at `base` reports no running or waiting request, at most `wait`."""

    base: str
    wait: float


@dataclass(frozen=True, slots=True)
class Confirm:
    prompt: str


@dataclass(frozen=True, slots=True)
class Notify:
    text: str


@dataclass(frozen=True, slots=True)
class Record:
    service: str
    node: str
    image: str | AtRun


Check = HttpWait | HttpSoak | FirstToken | Drained | Confirm | Notify | Record
CHECKS: dict[str, type[Check]] = {
    c.__name__: c for c in (HttpWait, HttpSoak, FirstToken, Drained, Confirm, Notify, Record)
}


@dataclass(frozen=True, slots=True)
class Op:
    """One thing a run does. `where`: the node a command runs on, or LOCAL (the reliability
    host itself). `detail`: for `run`, the command line exactly as sent; `stdin`: what is
    written to its standard input; `note`: why, in a few words.

    For the run: `argv` is the command as words when one is an AtRun; `saves` keeps the
    command's output under that key; `needs` skips the operation when that key holds
    nothing (no container ran before, so none is put back); `changes`: sending it changes
    the system, so from then on the unit must be undone if the run fails; `may_fail`: a
    non-zero exit is an answer, not a failure; `check`: what a local operation does."""

    where: str
    kind: OpKind
    detail: str
    stdin: str | AtRun | None = None
    note: str = ""
    argv: tuple[Arg, ...] | None = field(default=None, repr=False)
    saves: str | None = None
    needs: str | None = None
    changes: bool = False
    may_fail: bool = False
    check: Check | None = None

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


def seconds(value: float) -> str:
    return format_duration(value) if value else "0s"


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


# --- containers and readiness -------------------------------------------------------------
def container_name(node: NodeConfig, service: ServiceConfig) -> str:
    return node.container or service.container or service.name


def _docker_run(
    node: NodeConfig, service: ServiceConfig, pool: str | None, image: Arg
) -> list[Arg]:
    name = container_name(node, service)
    argv: list[Arg] = ["docker", "run", "-d", "--name", name, "--restart", "unless-stopped"]
    if node.gpus:
        argv += ["--gpus", "all"]
    argv += ["-p", f"{service.port}:{service.port}", "-l", f"reliability.service={service.name}"]
    if pool:
        argv += ["-l", f"pool={pool}"]
    return [*argv, image]


def image_key(step_id: str, node: str) -> str:
    """Where a run keeps the image a node's container ran before step `step_id`."""
    return f"image@{step_id}@{node}"


def deploy_ops(
    node: NodeConfig, service: ServiceConfig, pool: str | None, image: Arg, *, saves: str
) -> list[Op]:
    """Pull by digest first (a bad digest fails before anything stops), then replace. No
    container to remove is not a failure: a standby has none before its first deploy."""
    name = container_name(node, service)
    inspect = ["docker", "inspect", "--format", "{{.Config.Image}}", name]
    return [
        run_op(node.name, ["docker", "pull", image]),
        run_op(node.name, inspect, note="saved for undo", saves=saves, may_fail=True),
        run_op(node.name, ["docker", "rm", "-f", name], changes=True, may_fail=True),
        run_op(node.name, _docker_run(node, service, pool, image), changes=True),
    ]


def redeploy_ops(
    node: NodeConfig,
    service: ServiceConfig,
    pool: str | None,
    saved: str,
    *,
    ttft: float,
    within: float,
) -> list[Op]:
    """The undo of a deploy: the container as it ran before, by the saved image, ready
    again; when none ran before, only the new one is removed."""
    name = container_name(node, service)
    previous = AtRun(f"image {name} ran before, as saved", saved)
    ready = [replace(op, needs=saved) for op in ready_ops(node, service, ttft, within)]
    return [
        run_op(node.name, ["docker", "rm", "-f", name], changes=True, may_fail=True),
        run_op(node.name, _docker_run(node, service, pool, previous), needs=saved, changes=True),
        *ready,
    ]


def ready_ops(node: NodeConfig, service: ServiceConfig, ttft: float, within: float) -> list[Op]:
    """Model-aware readiness: health answers, and a real one-token completion starts fast."""
    base = f"http://{host_port(node.address, service.port)}"
    shown = service.model or "<the model /v1/models lists first>"
    return [
        Op(
            LOCAL,
            "http",
            f"GET {base}{service.health_path} until 200, within {seconds(within)}",
            check=HttpWait(base + service.health_path, within=within, interval=0.5),
        ),
        Op(
            LOCAL,
            "http",
            f"POST {base}/v1/chat/completions (model {shown}, max_tokens 1, streamed): "
            f"first token within {seconds(ttft)}",
            check=FirstToken(base, service.model, ttft),
        ),
    ]
