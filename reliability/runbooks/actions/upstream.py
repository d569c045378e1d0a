"""The balancer's upstream of each service as a plan follows it through the steps (shared by
lb_set_pool and drain; not an action): who is in it after each step, and what it was before
each step that rewrote it, so `restore_from` can put that back. It starts from each
service's `active_pool`, so every rewrite shows the file a run would write."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reliability.config import ServiceConfig
from reliability.runbooks import ops
from reliability.runbooks.actions.base import StepBase, undo_commands
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import AtRun, Op, Unit
from reliability.runbooks.scope import lb_node, load_balancer

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope


class Upstreams:
    """One plan's upstreams (`planner.state(Upstreams)`)."""

    def __init__(self) -> None:
        # Members per service (node name -> serving), followed through the steps, and as
        # they were before each step that rewrote one (for `restore_from`).
        self.current: dict[str, dict[str, bool]] = {}
        self.before: dict[str, tuple[str, dict[str, bool]]] = {}

    def members(self, step_id: str, service: ServiceConfig, planner: Planner) -> dict[str, bool]:
        """The upstream of `service`, remembered as it was before step `step_id` first
        changed it; the caller changes it in place."""
        if service.name not in self.current:
            active = [n.name for n in planner.pool_nodes(service.active_pool)]
            self.current[service.name] = dict.fromkeys(active, True)
        members = self.current[service.name]
        self.before.setdefault(step_id, (service.name, dict(members)))
        return members


def lb_unit(
    step: StepBase,
    service: ServiceConfig,
    after: list[Op],
    scope: Scope,
    planner: Planner,
    *,
    verify: float | None,
) -> Unit:
    """Rewrite the service's upstream file to the members followed so far, then `after`;
    with `verify` (seconds), check the service answers through the balancer."""
    config = planner.config
    lb, node = load_balancer(service), lb_node(config, service).name
    current = planner.state(Upstreams).current[service.name]
    members = [(config.node(n), up) for n, up in current.items()]
    content = ops.upstream_text(lb, service, members)
    key = ops.upstream_key(step.id)
    run = ops.lb_write_ops(node, lb, content, saves=key, verify=verify) + after
    undo = undo_commands(step, node, scope, planner) or ops.lb_restore_ops(
        node, lb, saved_upstream(step.id)
    )
    return Unit(node, run, undo)


def lb_restore(step: StepBase, service: ServiceConfig, earlier: str, planner: Planner) -> Unit:
    """Back to the upstream file as it was before step `earlier`, byte for byte."""
    lb, node = load_balancer(service), lb_node(planner.config, service).name
    upstreams = planner.state(Upstreams)
    name, members = upstreams.before[earlier]
    if name != service.name:
        raise ScopeError(f"step {earlier} rewrote the upstream of {name}, not {service.name}")
    upstreams.current[service.name] = dict(members)
    planner.switches.pop(service.name, None)
    key = ops.upstream_key(step.id)
    save = ops.run_op(node, ["cat", lb.upstream_file], note="saved for undo", saves=key)
    run = ops.lb_restore_ops(node, lb, saved_upstream(earlier))
    undo = ops.lb_restore_ops(node, lb, saved_upstream(step.id))
    return Unit(node, [save, *run], undo)


def saved_upstream(step_id: str) -> AtRun:
    return AtRun(f"upstream file saved before step {step_id}", ops.upstream_key(step_id))
