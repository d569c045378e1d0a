"""`capacity_gate`: before traffic moves to a pool (a blue-green switch, a new build), load
it with a short bounded test at the users of a recorded baseline and require a share of
that baseline's requests/s within the service's objectives (`gate: {capacity: 0.9}`). The
step's result says by how much it passed or failed; the test is recorded (purpose `gate`,
never a baseline). The load runs in its own process (capacity/measure.py).

With `nodes` (a target group of the pool's nodes, e.g. the one node a new image went to
first, out of rotation) only those are loaded, against their share of the baseline: its
users and requests/s scaled by their number over the nodes the baseline loaded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from reliability.capacity import measure
from reliability.capacity.models import Purpose
from reliability.capacity.plan import Plan
from reliability.config import Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import Action, Loc, NameTemplate, StepBase
from reliability.runbooks.checks import OpOutcome, RunContext, seconds
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, Op, Unit, host_port

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.spec import Runbook

DRAIN_S = 30.0  # the generator's start and its last answers, within the step's timeout


class Gate(Strict):
    capacity: float = Field(..., gt=0, le=2, description="share of the baseline's requests/s")


class CapacityGateArgs(Strict):
    service: NameTemplate
    pool: NameTemplate = Field(..., description="the pool traffic is about to move to")
    baseline_pool: NameTemplate | None = Field(
        None, description="whose baseline it must reach (default: the pool's own)"
    )
    gate: Gate
    duration: Duration = Field(30.0, gt=0, le=600, description="the load test, bounded")


class CapacityGateStep(StepBase):
    action: Literal["capacity_gate"]
    args: CapacityGateArgs
    timeout: Duration = 120.0
    nodes: str | None = Field(
        None, description="a target group of the pool's nodes: only those are loaded"
    )


@dataclass(frozen=True, slots=True)
class CapacityGate:
    """Load `pool` for `duration` at the users of `baseline_pool`'s baseline; pass when it
    holds `fraction` of that baseline's requests/s within the objectives `plan` carries."""

    service: str
    pool: str
    baseline_pool: str
    fraction: float
    duration: float
    plan: Plan
    # Loading only these nodes of the pool (their names), against their share of it.
    nodes: tuple[str, ...] = ()

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        baseline = run.capacity_baseline(service=self.service, pool=self.baseline_pool)
        if baseline is None:
            return OpOutcome(
                False,
                f"no capacity baseline of {self.service} pool {self.baseline_pool} to gate on: "
                f"run `reliability capacity test {self.service} --pool {self.baseline_pool}`",
            )
        step_s = min(self.duration, deadline - time.monotonic() - DRAIN_S)
        if step_s < measure.MIN_STEP_S:
            return OpOutcome(False, "no time left in the step's timeout for the load test")
        users, part = baseline.users, 1.0
        if self.nodes:  # their share of the baseline, in whole users
            users = max(1, round(baseline.users * len(self.nodes) / max(baseline.nodes, 1)))
            part = users / baseline.users
        model = self.plan.model or _listed_model(run, self.plan.urls[0])
        plan = replace(self.plan, model=model, steps=[users], step_s=step_s)
        started = datetime.now(UTC)
        try:
            steps = measure.run(plan)
        except measure.LoadFailed as exc:
            return OpOutcome(False, str(exc))
        test = measure.record(
            self.service, self.pool, Purpose.gate, "runbook", started, list(plan.urls), steps, []
        )
        run.record_capacity(test)
        expected = baseline.qps * part
        need = self.fraction * expected
        reached = test.qps / expected if expected else 0.0
        margin = (reached - self.fraction) * 100
        loaded = f"pool {self.pool}"
        if self.nodes:
            loaded = f"{', '.join(self.nodes)} of {loaded}"
        of = (
            f"their share ({len(self.nodes)} of {baseline.nodes} nodes: {expected:.2f}) of "
            if self.nodes
            else ""
        )
        held = f"{loaded} held {test.qps:.2f} requests/s at {users} users"
        against = (
            f"{reached:.0%} of {of}pool {self.baseline_pool}'s baseline {baseline.qps:.2f} "
            f"(test {baseline.id}); the gate asks {self.fraction:.0%} ({need:.2f})"
        )
        if not test.held:
            missed = "; ".join(steps[-1].missed) if steps else "no step ran"
            return OpOutcome(
                False,
                f"gate failed: {loaded} missed {self.service}'s objectives at "
                f"{users} users ({missed}); {self.fraction:.0%} of {of}pool "
                f"{self.baseline_pool}'s baseline {baseline.qps:.2f} requests/s needed",
            )
        if test.qps < need:
            return OpOutcome(False, f"gate failed by {-margin:.0f} points: {held}, {against}")
        return OpOutcome(True, f"gate passed by {margin:.0f} points: {held}, {against}")


def _listed_model(run: RunContext, url: str) -> str:
    try:
        return str(run.http.get(f"{url}/v1/models").json()["data"][0]["id"])
    except Exception:  # the load test's own requests then say what is wrong
        return ""


class CapacityGateAction(Action[CapacityGateStep]):
    step = CapacityGateStep
    checks = (CapacityGate,)

    def problems(
        self, step: CapacityGateStep, loc: Loc, runbook: Runbook, seen: dict[str, str]
    ) -> Iterator[tuple[Loc, str]]:
        if step.nodes is not None and step.nodes not in runbook.targets:
            yield (*loc, "nodes"), runbook.no_target(step.nodes)

    def plan(self, step: CapacityGateStep, planner: Planner) -> list[Unit]:
        args = step.args
        service = planner.service(args.service)
        pool = planner.text(args.pool, "name")
        baseline_pool = planner.text(args.baseline_pool, "name") if args.baseline_pool else pool
        for name in (pool, baseline_pool):
            if name not in service.pools:
                raise ScopeError(f"{name!r} is not a pool of {service.name} ({service.pools})")
        nodes = planner.pool_nodes(pool)
        if not nodes:
            raise ScopeError(f"pool {pool!r} has no node to load")
        if step.nodes is not None:
            chosen = planner.group(step.nodes)
            if stray := [n.name for n in chosen if n not in nodes]:
                raise ScopeError(f"{', '.join(stray)} of group {step.nodes!r} not in pool {pool}")
            nodes = chosen
        urls = [f"http://{host_port(n.address, service.port)}" for n in nodes]
        limits, objectives = service.capacity, service.objectives
        plan = Plan(
            urls=urls,
            model=service.model or "",
            steps=[],  # the baseline's users, read when the step runs
            step_s=args.duration,
            spawn_rate=measure.MAX_SPAWN_RATE,
            prompt_words=limits.prompt_words,
            max_tokens=limits.max_tokens,
            stream_share=limits.stream_share,
            request_timeout=min(limits.request_timeout, args.duration),
            ttft_p95_s=objectives.ttft_p95,
            e2e_p95_s=objectives.e2e_p95,
            error_ratio=objectives.error_ratio,
        )
        names = tuple(n.name for n in nodes) if step.nodes is not None else ()
        check = CapacityGate(
            service.name, pool, baseline_pool, args.gate.capacity, args.duration, plan, names
        )
        line = (
            f"load pool {pool} ({', '.join(n.name for n in nodes)}) for "
            f"{seconds(args.duration)} at the users of pool {baseline_pool}'s capacity "
            f"baseline: it must hold {args.gate.capacity:.0%} of its requests/s within "
            f"{service.name}'s objectives"
        )
        if names:
            line = (
                f"load {', '.join(names)} of pool {pool} alone for {seconds(args.duration)} "
                f"at their share of pool {baseline_pool}'s capacity baseline (its users and "
                f"requests/s x {len(names)} / the nodes it loaded): they must hold "
                f"{args.gate.capacity:.0%} of that share's requests/s within "
                f"{service.name}'s objectives"
            )
        return [Unit(LOCAL, [Op(LOCAL, "check", line, check=check)], [])]
