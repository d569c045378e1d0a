"""The operations each action consists of: the exact command lines sent to a node, and the
checks made from the reliability host. `plan` prints them; the executor performs them, so
what an operator reads in a plan is what a run sends.

Every command is built from an argument list with `shlex.join`; a value only a run can
know (the previous image, the saved upstream file) appears as `<...>` in its place.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from reliability.config import LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.durations import format_duration

LOCAL = "local"
OpKind = Literal["run", "http", "wait", "confirm", "notify", "record"]


@dataclass(frozen=True, slots=True)
class AtRun:
    """A value the run fills in when it gets there (shown as `<what>`)."""

    what: str

    def __str__(self) -> str:
        return f"<{self.what}>"


Arg = str | AtRun


@dataclass(frozen=True, slots=True)
class Op:
    """One thing a run does. `where`: the node a command runs on, or LOCAL (the reliability
    host itself). `detail`: for `run`, the command line exactly as sent; `stdin`: what is
    written to its standard input; `note`: why, in a few words."""

    where: str
    kind: OpKind
    detail: str
    stdin: str | None = None
    note: str = ""


def command(argv: Sequence[Arg]) -> str:
    """A shell command line: each literal argument quoted, each run-time value marked."""
    return " ".join(str(a) if isinstance(a, AtRun) else shlex.quote(a) for a in argv)


def seconds(value: float) -> str:
    return format_duration(value) if value else "0s"


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- load balancer -----------------------------------------------------------------------
def upstream_text(
    lb: LoadBalancerConfig, service: ServiceConfig, members: Sequence[tuple[NodeConfig, bool]]
) -> str:
    """The upstream file for `members` (node, serving; False: listed but taken out)."""
    head = "# Written by reliability's runbooks; edit the runbook, not this file.\n"
    if lb.kind == "nginx":
        servers = "".join(
            f"    server {host_port(n.address, service.port)}{'' if up else ' down'};\n"
            for n, up in members
        )
        return f"{head}upstream {service.name} {{\n{servers}}}\n"
    servers = "".join(
        f"    server {n.name} {host_port(n.address, service.port)} check"
        f"{'' if up else ' disabled'}\n"
        for n, up in members
    )
    return f"{head}backend {service.name}\n{servers}"


def _lb_check_reload(lb_node: str, lb: LoadBalancerConfig) -> list[Op]:
    if lb.kind == "nginx":
        conf: list[Arg] = ["-c", lb.config_file] if lb.config_file else []
        test, reload = ["nginx", "-t", *conf], ["nginx", *conf, "-s", "reload"]
    else:
        main = lb.config_file or "/etc/haproxy/haproxy.cfg"
        test, reload = (
            ["haproxy", "-c", "-f", main, "-f", lb.upstream_file],
            [
                "systemctl",
                "reload",
                "haproxy",
            ],
        )
    return [
        Op(lb_node, "run", command(test), note="validate; on failure the old file goes back"),
        Op(lb_node, "run", command(reload), note="graceful: in-flight requests finish"),
    ]


def _write(lb_node: str, path: str, content: str, note: str) -> Op:
    """Replace a file atomically: a new file beside it, renamed over it."""
    tmp = f"{path}.reliability-new"
    line = f"{command(['cat'])} > {shlex.quote(tmp)} && {command(['mv', '-f', tmp, path])}"
    return Op(lb_node, "run", line, stdin=content, note=note)


def lb_write_ops(lb_node: str, lb: LoadBalancerConfig, content: str, *, verify: bool) -> list[Op]:
    """Save the current upstream file, write the new one, validate, reload; with `verify`,
    check the service answers through the balancer (not after a drain: it may have no
    member left serving)."""
    ops = [
        Op(lb_node, "run", command(["cat", lb.upstream_file]), note="saved for undo"),
        _write(lb_node, lb.upstream_file, content, "the new upstream"),
        *_lb_check_reload(lb_node, lb),
    ]
    if verify:
        ops.append(Op(LOCAL, "http", f"GET {lb.url} until 200", note="through the balancer"))
    return ops


def lb_restore_ops(lb_node: str, lb: LoadBalancerConfig, saved: str) -> list[Op]:
    """Put a saved upstream file back byte for byte, validate, reload."""
    content = str(AtRun(saved))
    return [
        _write(lb_node, lb.upstream_file, content, "byte for byte"),
        *_lb_check_reload(lb_node, lb),
    ]


# --- containers and readiness -------------------------------------------------------------
def container_name(node: NodeConfig, service: ServiceConfig) -> str:
    return node.container or service.container or service.name


def _docker_run(node: NodeConfig, service: ServiceConfig, pool: str | None, image: Arg) -> str:
    name = container_name(node, service)
    argv: list[Arg] = ["docker", "run", "-d", "--name", name, "--restart", "unless-stopped"]
    if node.gpus:
        argv += ["--gpus", "all"]
    argv += ["-p", f"{service.port}:{service.port}", "-l", f"reliability.service={service.name}"]
    if pool:
        argv += ["-l", f"pool={pool}"]
    return command([*argv, image])


def deploy_ops(node: NodeConfig, service: ServiceConfig, pool: str | None, image: Arg) -> list[Op]:
    """Pull by digest first (a bad digest fails before anything stops), then replace."""
    name = container_name(node, service)
    inspect = ["docker", "inspect", "--format", "{{.Config.Image}}", name]
    return [
        Op(node.name, "run", command(["docker", "pull", image])),
        Op(node.name, "run", command(inspect), note="saved for undo"),
        Op(node.name, "run", command(["docker", "rm", "-f", name])),
        Op(node.name, "run", _docker_run(node, service, pool, image)),
    ]


def redeploy_ops(node: NodeConfig, service: ServiceConfig, pool: str | None) -> list[Op]:
    """The undo of a deploy: the container as it ran before, by the saved image."""
    name = container_name(node, service)
    previous = AtRun(f"image {name} ran before, as saved")
    return [
        Op(node.name, "run", command(["docker", "rm", "-f", name])),
        Op(node.name, "run", _docker_run(node, service, pool, previous)),
    ]


def ready_ops(node: NodeConfig, service: ServiceConfig, ttft: float, within: float) -> list[Op]:
    """Model-aware readiness: health answers, and a real one-token completion starts fast."""
    base = f"http://{host_port(node.address, service.port)}"
    model = service.model or "<the model /v1/models lists first>"
    return [
        Op(LOCAL, "http", f"GET {base}{service.health_path} until 200, within {seconds(within)}"),
        Op(
            LOCAL,
            "http",
            f"POST {base}/v1/chat/completions (model {model}, max_tokens 1, streamed): "
            f"first token within {seconds(ttft)}",
        ),
    ]
