"""`rolling_deploy`: replace the service's container on each node of a target group without
failing a request: a few nodes at a time (`max_unavailable` of each pool), each taken out
of the upstream (listed `down`) and waited on until its engine has no request running or
waiting, replaced (deploy_image's reversible replacement), checked with a real one-token
completion, and put back before the next ones go.

Composed from the other actions' parts, not a copy of them: the upstream edits are
`lb_unit` (actions/upstream.py: the live file, only these server lines marked down and up
again), the wait is drain's `Drained` check, the replacement and
its readiness are deploy_image's `replacement`. One unit per batch, so that the balancer's
file is never rewritten by two units at once. Its undo puts the replaced containers back
(same ids), then the upstream file as it was before the batch went out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from reliability.config import NodeConfig, ServiceConfig, Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import (
    Action,
    ImageTemplate,
    Loc,
    NameTemplate,
    NodeStep,
    undo_commands,
)
from reliability.runbooks.actions.deploy_image import replacement
from reliability.runbooks.actions.drain import Drained
from reliability.runbooks.actions.lb_set_pool import LB_VERIFY
from reliability.runbooks.actions.upstream import lb_unit
from reliability.runbooks.checks import FirstToken, HttpWait, seconds
from reliability.runbooks.ops import LOCAL, Op, Unit, host_port, upstream_edit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.spec import Runbook


class RollingDeployArgs(Strict):
    service: NameTemplate
    image: ImageTemplate = Field(..., description="REF@sha256:…, or known-good")
    pool: NameTemplate | None = Field(None, description="pool label of the new containers")
    max_unavailable: int = Field(
        1, ge=1, description="nodes of one pool out of the upstream at a time"
    )
    drain_wait: Duration = Field(
        60.0, description="longest wait for a node's in-flight requests before it is replaced"
    )
    ttft: Duration = 10.0
    within: Duration = 300.0


class RollingDeployStep(NodeStep):
    action: Literal["rolling_deploy"]
    args: RollingDeployArgs
    changes_state: ClassVar[bool] = True


def batches_of(nodes: list[NodeConfig], size: int) -> list[list[NodeConfig]]:
    """At most `size` nodes of one pool per batch, pool after pool, in the group's order."""
    pools: dict[str | None, list[NodeConfig]] = {}
    for node in nodes:
        pools.setdefault(node.pool, []).append(node)
    return [
        members[i : i + size] for members in pools.values() for i in range(0, len(members), size)
    ]


class RollingDeployAction(Action[RollingDeployStep]):
    step = RollingDeployStep
    restores = (
        "takes the nodes out again, starts the containers they replaced, restores the upstream"
    )
    checks = (HttpWait, FirstToken, Drained)

    def problems(
        self, step: RollingDeployStep, loc: Loc, runbook: Runbook, seen: dict[str, str]
    ) -> Iterator[tuple[Loc, str]]:
        if step.batch is not None:
            yield (*loc, "batch"), "rolling_deploy batches by `args.max_unavailable` (per pool)"

    def units(
        self, step: RollingDeployStep, nodes: list[NodeConfig], planner: Planner
    ) -> tuple[list[list[str]], list[Unit]]:
        units = [
            self._batch(step, batch, planner)
            for batch in batches_of(nodes, step.args.max_unavailable)
        ]
        return [[u.target] for u in units], units

    def _batch(self, step: RollingDeployStep, nodes: list[NodeConfig], planner: Planner) -> Unit:
        args = step.args
        label = "+".join(n.name for n in nodes)
        scope = planner.scope.bind("target", nodes[0])
        service = planner.service(args.service, scope)
        image = planner.image(args.image, service)
        serving = self._serving(step, service, nodes, planner)
        run: list[Op] = []
        undo: list[Op] = []
        cleanup: list[Op] = []
        for node in nodes:
            pool = (
                planner.text(args.pool, "name", planner.scope.bind("target", node))
                if args.pool
                else node.pool
            )
            node_run, node_undo, node_cleanup = replacement(
                planner.config,
                node,
                service,
                pool,
                image,
                step_id=step.id,
                ttft=args.ttft,
                within=args.within,
            )
            run += node_run
            undo += node_undo
            cleanup += node_cleanup
        if serving:
            waits = [self._drained(n, service.port, args.drain_wait) for n in serving]
            out, back = self._out_and_back(step, label, service, serving, waits, planner)
            run = out.ops + run + back.ops
            # The containers back first (the batch still out), then the file as it was.
            undo = undo + out.undo
        undo = undo_commands(step, nodes[0].name, scope, planner) or undo
        return Unit(label, run, undo, cleanup)

    @staticmethod
    def _serving(
        step: RollingDeployStep, service: ServiceConfig, nodes: list[NodeConfig], planner: Planner
    ) -> list[NodeConfig]:
        """Those of `nodes` the upstream sends requests to: the nodes serving the service's
        active pool now (the others are replaced without a drain: a pool not serving, a
        node out of the fleet)."""
        if service.load_balancer is None:
            return []
        serving = {n.name for n in planner.pool_nodes(service.active_pool)}
        return [n for n in nodes if n.name in serving]

    @staticmethod
    def _out_and_back(
        step: RollingDeployStep,
        label: str,
        service: ServiceConfig,
        serving: list[NodeConfig],
        waits: list[Op],
        planner: Planner,
    ) -> tuple[Unit, Unit]:
        """The balancer's units that mark `serving` down (then `waits`) and up again (then
        check the service answers through it): the upstream's `lb_unit`, each under a step
        id of its own so the run keeps each file it read apart."""
        restore = step.model_copy(update={"undo": "restore"})
        out = lb_unit(
            restore.model_copy(update={"id": f"{step.id}.{label}.out"}),
            service,
            upstream_edit(service, "down", serving),
            waits,
            planner.scope,
            planner,
            target=label,
            verify=None,
        )
        back = lb_unit(
            restore.model_copy(update={"id": f"{step.id}.{label}.back"}),
            service,
            upstream_edit(service, "up", serving),
            [],
            planner.scope,
            planner,
            target=label,
            verify=min(step.timeout, LB_VERIFY),
        )
        return out, back

    @staticmethod
    def _drained(node: NodeConfig, port: int, wait: float) -> Op:
        return Op(
            LOCAL,
            "wait",
            f"until {node.name} has no in-flight or streaming request, at most {seconds(wait)}",
            check=Drained(f"http://{host_port(node.address, port)}", wait),
        )
