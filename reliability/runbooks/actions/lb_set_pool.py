"""`lb_set_pool`: rewrite a service's upstream on its balancer: to a pool's nodes (a switch,
remembered as the service's pool after a successful run), adding a target group's nodes,
or back to the file as it was before an earlier step (`restore_from`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import model_validator

from reliability.config import Strict
from reliability.runbooks.actions.base import Action, Loc, NameTemplate, StepBase
from reliability.runbooks.actions.upstream import Upstreams, lb_restore, lb_unit
from reliability.runbooks.checks import HttpWait
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.spec import Runbook

LB_VERIFY = 30.0  # longest wait for the service to answer through the balancer after a switch
# The actions whose step rewrites an upstream, so `restore_from` may name it.
REWRITES_UPSTREAM = ("lb_set_pool", "drain")


class LbSetPoolArgs(Strict):
    """Rewrite the service's upstream: to a pool's nodes, adding a target group's nodes,
    or back to the file as it was before an earlier step."""

    service: NameTemplate
    pool: NameTemplate | None = None
    add: str | None = None
    restore_from: str | None = None

    @model_validator(mode="after")
    def _one_change(self) -> LbSetPoolArgs:
        if sum(x is not None for x in (self.pool, self.add, self.restore_from)) != 1:
            raise ValueError("give exactly one of `pool`, `add`, `restore_from`")
        return self


class LbSetPoolStep(StepBase):
    action: Literal["lb_set_pool"]
    args: LbSetPoolArgs
    changes_state: ClassVar[bool] = True


class LbSetPoolAction(Action[LbSetPoolStep]):
    step = LbSetPoolStep
    restores = "puts the previous upstream file back byte for byte"
    checks = (HttpWait,)

    def problems(
        self, step: LbSetPoolStep, loc: Loc, runbook: Runbook, seen: dict[str, str]
    ) -> Iterator[tuple[Loc, str]]:
        args = step.args
        if args.add is not None and args.add not in runbook.targets:
            yield (*loc, "args", "add"), runbook.no_target(args.add)
        earlier = args.restore_from
        if earlier is not None and seen.get(earlier) not in REWRITES_UPSTREAM:
            yield (
                (*loc, "args", "restore_from"),
                f"{earlier!r} is not an earlier lb_set_pool or drain step",
            )

    def skipped(self, step: LbSetPoolStep, planner: Planner) -> str | None:
        earlier = step.args.restore_from
        if earlier is not None and earlier not in planner.state(Upstreams).before:
            # A skipped rewrite left the file as it was: there is nothing to put back.
            return f"step {earlier} did not rewrite the upstream"
        return None

    def plan(self, step: LbSetPoolStep, planner: Planner) -> list[Unit]:
        args = step.args
        service = planner.service(args.service)
        members = planner.state(Upstreams).members(step.id, service, planner)
        if args.pool is not None:
            pool = planner.text(args.pool, "name")
            if pool not in service.pools:
                raise ScopeError(f"{pool!r} is not a pool of {service.name} ({service.pools})")
            members.clear()
            members.update((n.name, True) for n in planner.pool_nodes(pool))
            planner.switches[service.name] = pool
        elif args.add is not None:
            members.update((n.name, True) for n in planner.group(args.add))
        else:
            assert args.restore_from is not None
            return [lb_restore(step, service, args.restore_from, planner)]
        verify = min(step.timeout, LB_VERIFY)
        return [lb_unit(step, service, [], planner.scope, planner, verify=verify)]
