"""`lb_route`: point a service's public location at the hosted API or at its own pool, by
copying the prepared variant over the route file the location includes (`load_balancer.
route`, the pattern of deploy/nginx/), checking and reloading nginx; then a real streamed
completion must come back through the balancer. `undo: restore` puts the route file back
byte for byte. The upstream file and the variants themselves are never written."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field

from reliability import balancers
from reliability.config import Strict
from reliability.durations import Duration
from reliability.runbooks import ops
from reliability.runbooks.actions.base import Action, NameTemplate, StepBase, undo_commands
from reliability.runbooks.checks import FirstToken, OpOutcome, RunContext, seconds
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, AtRun, Op, Unit
from reliability.runbooks.scope import lb_node, load_balancer

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner

RETRY_EVERY = 0.2


class LbRouteArgs(Strict):
    service: NameTemplate
    to: Literal["hosted", "local"]
    ttft: Duration = Field(10.0, description="limit on the first token through the balancer")
    within: Duration = Field(
        5.0,
        description="retry the completion this long; every failed try is a client's failed "
        "request too, so a side that does not answer is undone soon",
    )


class LbRouteStep(StepBase):
    action: Literal["lb_route"]
    args: LbRouteArgs
    changes_state: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class CompletionThrough:
    """A streamed one-token completion through the balancer at `base`, asked until one
    answers within `within`. First `settle` seconds pass: for a moment after a reload the
    old workers still accept, and route as before the swap, so a completion answered
    sooner would not say which side serves (nothing in an answer does)."""

    base: str
    model: str | None
    ttft: float
    within: float
    settle: float = 0.0

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        end = min(deadline, time.monotonic() + self.within)
        if run.stop.wait(self.settle):
            return OpOutcome(False, f"{self.base}: stopped before verifying")
        first = FirstToken(self.base, self.model, self.ttft)
        tries = 0
        while True:
            tries += 1
            outcome = first.perform(run, end)
            if outcome.ok or time.monotonic() + RETRY_EVERY >= end:
                outcome.text = f"through the balancer: {outcome.text} (try {tries})"
                return outcome
            if run.stop.wait(RETRY_EVERY):
                return OpOutcome(False, f"{self.base}: stopped while verifying ({tries} tries)")


def saved_route(step_id: str) -> AtRun:
    return AtRun(f"route file saved before step {step_id}", f"route@{step_id}")


class LbRouteAction(Action[LbRouteStep]):
    step = LbRouteStep
    restores = "puts the previous route file back byte for byte"
    checks = (CompletionThrough,)

    def plan(self, step: LbRouteStep, planner: Planner) -> list[Unit]:
        args = step.args
        service = planner.service(args.service)
        lb = load_balancer(service)
        if lb.route is None:
            raise ScopeError(
                f"service {service.name} has no load_balancer.route to swap "
                "(see deploy/nginx/README.md)"
            )
        node = lb_node(planner.config, service).name
        variant = lb.route.hosted if args.to == "hosted" else lb.route.local
        saved = saved_route(step.id)
        parts = urlsplit(lb.url)
        base = f"{parts.scheme}://{parts.netloc}"
        within = min(step.timeout, args.within)
        shown = service.model or "<the model /v1/models lists first>"
        verify = Op(
            LOCAL,
            "http",
            f"POST {base}/v1/chat/completions (model {shown}, max_tokens 1, streamed): first "
            f"token within {seconds(args.ttft)}, retried for {seconds(within)}",
            note=f"through the balancer, from the {args.to} side once old workers stop",
            check=CompletionThrough(
                base, service.model, args.ttft, within, balancers.for_config(lb).settle
            ),
        )
        run = [*ops.lb_swap_ops(node, lb, lb.route.file, variant, saved.key or ""), verify]
        undo = undo_commands(step, node, planner.scope, planner) or ops.lb_restore_ops(
            node, lb, saved, file=lb.route.file
        )
        return [Unit(node, run, undo)]
