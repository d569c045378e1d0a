"""`deploy_image`: replace the service's container on each node of a target group with an
image pinned by digest (or the registry's known-good one), then wait until it is ready.
Its undo runs the image the container ran before, read during the run. With `unless_warm`
the step is skipped on warm standbys (the fleet's `warm-standby`), which already run it."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from reliability.config import NodeConfig, ServiceConfig, Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import (
    Action,
    ImageTemplate,
    NameTemplate,
    NodeStep,
    undo_commands,
)
from reliability.runbooks.actions.ready import ready_ops
from reliability.runbooks.checks import FirstToken, HttpWait
from reliability.runbooks.ops import Arg, AtRun, Op, Unit, run_op

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope


class DeployImageArgs(Strict):
    service: NameTemplate
    image: ImageTemplate = Field(..., description="REF@sha256:…, or known-good")
    pool: NameTemplate | None = Field(None, description="pool label of the new container")
    verify: bool = Field(True, description="wait until the node is ready before the next batch")
    ttft: Duration = 10.0
    within: Duration = 300.0
    unless_warm: bool = Field(
        False,
        description="skip when the group's nodes are warm standbys: the known-good image "
        "already runs there, checked",
    )


class DeployImageStep(NodeStep):
    action: Literal["deploy_image"]
    args: DeployImageArgs
    changes_state: ClassVar[bool] = True


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


class DeployImageAction(Action[DeployImageStep]):
    step = DeployImageStep
    restores = "redeploys the image the container ran before"
    checks = (HttpWait, FirstToken)

    def skipped(self, step: DeployImageStep, planner: Planner) -> str | None:
        if not step.args.unless_warm:
            return None
        nodes = planner.group(step.nodes)
        if all((live := planner.was(n.name)) and live.state == "warm-standby" for n in nodes):
            names = ", ".join(n.name for n in nodes)
            return f"{names}: a warm standby, the known-good image already runs there, checked"
        return None

    def unit(self, step: DeployImageStep, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        args = step.args
        service = planner.service(args.service, scope)
        pool = planner.text(args.pool, "name", scope) if args.pool else node.pool
        image = planner.image(args.image, service)
        saved = image_key(step.id, node.name)
        run = deploy_ops(node, service, pool, image, saves=saved)
        ready = ready_ops(node, service, args.ttft, args.within) if args.verify else []
        undo = undo_commands(step, node.name, scope, planner) or redeploy_ops(
            node, service, pool, saved, ttft=args.ttft, within=args.within
        )
        return Unit(node.name, run + ready, undo)
