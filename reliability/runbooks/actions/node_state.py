"""`node_state`: change the live state of each node of a target group in the fleet (a failed
node `out`, a standby `serving` the failed node's pool, a repaired node back to `standby`).

The plan reads the state each node is in (the planner's live fleet) and follows the change,
so later steps select from the fleet as it will be. The run changes it through the run's
`set_node_state` (flows.py connects the fleet domain) only if the node is still as the
plan saw it, so two runs never take the same standby; the undo, recorded before the change,
puts the state the node had back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from reliability.config import NodeConfig, NodeState, Strict
from reliability.runbooks.actions.base import Action, Loc, NameTemplate, NodeStep, TextTemplate
from reliability.runbooks.checks import OpOutcome, RunContext
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, Op, Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import LiveNode, Planner
    from reliability.runbooks.scope import Scope
    from reliability.runbooks.spec import Runbook

# States that belong to a pool: the node keeps its pool and service (out, repair: the ones
# it served last); a standby belongs to none.
POOLED: tuple[NodeState, ...] = ("serving", "out", "repair")


class NodeStateArgs(Strict):
    state: NodeState
    pool: NameTemplate | None = Field(None, description="serving: the pool (default: its own)")
    service: NameTemplate | None = Field(None, description="default: the service of the pool")
    reason: TextTemplate | None = None
    from_: list[NodeState] | None = Field(
        None, alias="from", description="the states it may be in; another one is refused"
    )


class NodeStateStep(NodeStep):
    action: Literal["node_state"]
    args: NodeStateArgs
    changes_state: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class SetNodeState:
    """Put `node` in `state` (serving `pool` of `service`) only if it is still in
    `expect_state` and `expect_pool`. `undo`: putting back what the run changed; a node no
    longer as the run left it (the change never happened, or someone changed it since) is
    left as it is, and that is not a failure."""

    node: str
    state: NodeState
    pool: str | None
    service: str | None
    reason: str | None
    expect_state: NodeState
    expect_pool: str | None
    undo: bool = False

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        return run.set_node_state(self)


def shown(live: LiveNode) -> str:
    return f"{live.state} {live.pool}" if live.pool and live.state == "serving" else live.state


class NodeStateAction(Action[NodeStateStep]):
    step = NodeStateStep
    restores = "puts each node's previous state back"
    checks = (SetNodeState,)

    def problems(
        self, step: NodeStateStep, loc: Loc, runbook: Runbook, seen: dict[str, str]
    ) -> Iterator[tuple[Loc, str]]:
        if step.args.state not in POOLED and step.args.pool is not None:
            yield (*loc, "args", "pool"), f"a node that is {step.args.state} serves no pool"

    def unit(self, step: NodeStateStep, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        args = step.args
        was = planner.fleet.get(node.name)
        if was is None:
            raise ScopeError(f"{node.name} is not a fleet node (role {node.role})")
        if args.from_ is not None and was.state not in args.from_:
            raise ScopeError(
                f"{node.name} is {shown(was)}"
                f"{f' ({was.reason})' if was.reason else ''}, not {' or '.join(args.from_)}"
            )
        pool = service = None
        if args.state in POOLED:
            pool = planner.text(args.pool, "name", scope) if args.pool else was.pool
            if args.service is not None:
                service = planner.service(args.service, scope).name
            elif pool is not None:
                found = planner.config.pool_service(pool)
                service = found.name if found else was.service
        if args.state == "serving" and pool is None:
            raise ScopeError(f"{node.name} would serve no pool; give the step `pool`")
        if (was.state, was.pool) == (args.state, pool):
            raise ScopeError(f"{node.name} is already {shown(was)}: nothing to change")
        reason = planner.text(args.reason, "text", scope) if args.reason else None
        now = replace(was, state=args.state, pool=pool, service=service, reason=reason)
        planner.fleet[node.name] = now
        change = SetNodeState(node.name, args.state, pool, service, reason, was.state, was.pool)
        back = SetNodeState(
            node.name, was.state, was.pool, was.service, was.reason, args.state, pool, undo=True
        )
        because = f" ({reason})" if reason else ""
        return Unit(
            node.name,
            [
                Op(
                    LOCAL,
                    "record",
                    f"{node.name}: {shown(was)} -> {shown(now)} in the fleet{because}",
                    changes=True,
                    check=change,
                )
            ],
            [Op(LOCAL, "record", f"{node.name}: back to {shown(was)} in the fleet", check=back)],
        )
