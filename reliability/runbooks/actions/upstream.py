"""The balancer's upstream of each service as a plan's steps edit it (shared by lb_set_pool
and drain; not an action). A step never writes a file made from the config: at run time it
reads the live file, applies its edit (balancers.Edit: mark down, add, switch...) and
writes the result, so what the operator keeps there (weights, comments, other upstreams)
stays. The plan remembers which step first edited which service's upstream, and under
which key the run keeps the file as it was before, so `restore_from` can put that back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reliability import balancers
from reliability.balancers import Edit
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
    """One plan's upstream edits (`planner.state(Upstreams)`)."""

    def __init__(self) -> None:
        # Per step that edited an upstream: the service, and the key of the file as it was
        # before the step's first unit edited it (for `restore_from`).
        self.before: dict[str, tuple[str, str]] = {}

    def save_key(self, step_id: str, target: str, service: ServiceConfig) -> str:
        """Where unit `target` of step `step_id` keeps the file it read: each unit its own,
        so a later unit of the step edits the file the earlier ones left."""
        if step_id not in self.before:
            key = ops.upstream_key(step_id)
            self.before[step_id] = (service.name, key)
            return key
        return f"{ops.upstream_key(step_id)}:{target}"


def lb_unit(
    step: StepBase,
    service: ServiceConfig,
    edit: Edit,
    after: list[Op],
    scope: Scope,
    planner: Planner,
    *,
    target: str | None = None,
    verify: float | None,
) -> Unit:
    """Apply `edit` to the service's upstream file as the run finds it, then `after`; with
    `verify` (seconds), check the service answers through the balancer."""
    lb, node = load_balancer(service), lb_node(planner.config, service).name
    key = planner.state(Upstreams).save_key(step.id, target or node, service)
    run = ops.lb_edit_ops(node, lb, edit, saves=key, verify=verify) + after
    undo = undo_commands(step, node, scope, planner) or ops.lb_restore_ops(
        node, lb, saved_upstream(step.id, key)
    )
    return Unit(node, run, undo)


def lb_restore(step: StepBase, service: ServiceConfig, earlier: str, planner: Planner) -> Unit:
    """Back to the upstream file as it was before step `earlier`, byte for byte."""
    lb, node = load_balancer(service), lb_node(planner.config, service).name
    upstreams = planner.state(Upstreams)
    name, earlier_key = upstreams.before[earlier]
    if name != service.name:
        raise ScopeError(f"step {earlier} edited the upstream of {name}, not {service.name}")
    planner.switches.pop(service.name, None)
    key = upstreams.save_key(step.id, node, service)
    read = balancers.for_config(lb).read_command()
    save = ops.Op(node, "run", read, note="saved for undo", saves=key)
    run = ops.lb_restore_ops(node, lb, saved_upstream(earlier, earlier_key))
    undo = ops.lb_restore_ops(node, lb, saved_upstream(step.id, key))
    return Unit(node, [save, *run], undo)


def saved_upstream(step_id: str, key: str) -> AtRun:
    return AtRun(f"upstream file saved before step {step_id}", key)
