"""`drain`: mark each node of a target group down in its service's upstream (its line,
parameters and comment kept; refused when the live file does not list it), then wait until
the engine on it has no request running or waiting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import httpx
from pydantic import Field

from reliability import catalog
from reliability.config import NodeConfig, Strict
from reliability.durations import Duration
from reliability.runbooks import ops
from reliability.runbooks.actions.base import Action, NameTemplate, NodeStep
from reliability.runbooks.actions.upstream import lb_unit
from reliability.runbooks.checks import OpOutcome, RunContext, seconds
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, Op, Unit, host_port

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope

DRAIN_SETTLE = 0.3  # seconds after a balancer reload before a member's load is read
# Engines' own gauges of requests on the node (running, waiting): vLLM, SGLang, TGI, Triton.
BUSY_METRICS = frozenset(
    m.name
    for m in (
        catalog.VLLM_RUNNING,
        catalog.VLLM_WAITING,
        catalog.SGLANG_RUNNING,
        catalog.SGLANG_QUEUE,
        catalog.TGI_QUEUE,
        catalog.TGI_BATCH,
        catalog.TRITON_PENDING,
    )
)


class DrainArgs(Strict):
    service: NameTemplate
    wait: Duration = Field(60.0, description="longest wait for in-flight requests to finish")


class DrainStep(NodeStep):
    action: Literal["drain"]
    args: DrainArgs
    changes_state: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Drained:
    """Until the engine at `base` reports no running or waiting request, at most `wait`."""

    base: str
    wait: float

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        end = min(deadline, time.monotonic() + self.wait)
        # nginx's old workers route new requests for ~0.1 s after a reload returns.
        time.sleep(min(DRAIN_SETTLE, max(0.0, end - time.monotonic())))
        while True:
            try:
                r = run.http.get(f"{self.base}/metrics", timeout=1.0)
            except httpx.HTTPError:
                return OpOutcome(True, f"{self.base} does not answer: nothing left to wait for")
            busy = _busy(r.text) if r.status_code == 200 else None
            if busy == 0:
                return OpOutcome(True, f"{self.base}: no request running or waiting")
            if time.monotonic() + 0.2 >= end or run.stop.is_set():
                what = "reports no request gauge" if busy is None else f"still has {busy:g}"
                return OpOutcome(True, f"{self.base} {what} after {seconds(self.wait)}: moved on")
            time.sleep(0.2)


def _busy(exposition: str) -> float | None:
    """Requests running or waiting, summed over the engine gauges present; None if none."""
    total, seen = 0.0, False
    for line in exposition.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in BUSY_METRICS:
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except (IndexError, ValueError):
                continue
    return total if seen else None


class DrainAction(Action[DrainStep]):
    step = DrainStep
    restores = "puts the previous upstream file back byte for byte"
    checks = (Drained,)

    def unit(self, step: DrainStep, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        service = planner.service(step.args.service, scope)
        if len(planner.group(step.nodes)) > 1 and step.batch != 1:
            # Each unit edits the file as it read it: two at once would lose one's edit.
            raise ScopeError("a drain of several nodes edits one upstream file: give `batch: 1`")
        wait = seconds(step.args.wait)
        base = f"http://{host_port(node.address, service.port)}"
        waiting = Op(
            LOCAL,
            "wait",
            f"until {node.name} has no in-flight or streaming request, at most {wait}",
            check=Drained(base, step.args.wait),
        )
        edit = ops.upstream_edit(service, "down", [node])
        unit = lb_unit(
            step, service, edit, [waiting], scope, planner, target=node.name, verify=None
        )
        return Unit(node.name, unit.ops, unit.undo)
