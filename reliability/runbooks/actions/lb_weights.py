"""`lb_weights`: a canary's step on the balancer: the service's upstream lists the active
pool's nodes and `pool`'s, weighted so that `pool` gets `share` percent of the requests
(nginx `weight=N`, HAProxy `weight N`; new servers added with theirs). Only those server
lines change in the live file (actions/upstream.py); `undo: restore` puts it back."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from reliability.balancers import Edit, Server
from reliability.config import NodeConfig, ServiceConfig, Strict
from reliability.runbooks.actions.base import Action, NameTemplate, StepBase
from reliability.runbooks.actions.upstream import lb_unit
from reliability.runbooks.checks import HttpWait
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import Unit, host_port

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner

LB_VERIFY = 30.0


class LbWeightsArgs(Strict):
    service: NameTemplate
    pool: NameTemplate = Field(..., description="the pool that gets `share` of the requests")
    share: int = Field(..., ge=1, le=99, description="percent of the requests to `pool`")


class LbWeightsStep(StepBase):
    action: Literal["lb_weights"]
    args: LbWeightsArgs
    changes_state: ClassVar[bool] = True


def weights(share: int, new_nodes: int, old_nodes: int) -> tuple[int, int]:
    """(a new node's weight, an old node's), smallest whole numbers giving the new pool
    `share` percent: new_nodes * w_new / (new_nodes * w_new + old_nodes * w_old)."""
    new, old = share * old_nodes, (100 - share) * new_nodes
    common = math.gcd(new, old)
    return new // common, old // common


def _servers(service: ServiceConfig, nodes: list[NodeConfig], weight: int) -> list[Server]:
    return [Server(host_port(n.address, service.port), name=n.name, weight=weight) for n in nodes]


class LbWeightsAction(Action[LbWeightsStep]):
    step = LbWeightsStep
    restores = "puts the previous upstream file back byte for byte"
    checks = (HttpWait,)

    def plan(self, step: LbWeightsStep, planner: Planner) -> list[Unit]:
        args = step.args
        service = planner.service(args.service)
        pool = planner.text(args.pool, "name")
        if pool not in service.pools or pool == service.active_pool:
            raise ScopeError(
                f"{pool!r} is not a pool of {service.name} other than its active "
                f"{service.active_pool} ({service.pools})"
            )
        new, old = planner.pool_nodes(pool), planner.pool_nodes(service.active_pool)
        if not new or not old:
            empty = pool if not new else service.active_pool
            raise ScopeError(f"pool {empty!r} has no node serving to weigh")
        w_new, w_old = weights(args.share, len(new), len(old))
        edit = Edit(
            service.name,
            "weight",
            (*_servers(service, old, w_old), *_servers(service, new, w_new)),
        )
        verify = min(step.timeout, LB_VERIFY)
        return [lb_unit(step, service, edit, [], planner.scope, planner, verify=verify)]
