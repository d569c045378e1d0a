"""`ready`: model-aware readiness of each node of a target group: its health path answers,
and a real one-token completion starts within `ttft`. deploy_image verifies with the same
operations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from reliability.config import NodeConfig, ServiceConfig, Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import Action, NameTemplate, NodeStep
from reliability.runbooks.checks import FirstToken, HttpWait, seconds
from reliability.runbooks.ops import LOCAL, Op, Unit, host_port

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope


class ReadyArgs(Strict):
    service: NameTemplate
    ttft: Duration = Field(10.0, description="limit on the first token of a 1-token completion")
    within: Duration = 120.0


class ReadyStep(NodeStep):
    action: Literal["ready"]
    args: ReadyArgs


def ready_ops(node: NodeConfig, service: ServiceConfig, ttft: float, within: float) -> list[Op]:
    """Model-aware readiness: health answers, and a real one-token completion starts fast."""
    base = f"http://{host_port(node.address, service.port)}"
    shown = service.model or "<the model /v1/models lists first>"
    return [
        Op(
            LOCAL,
            "http",
            f"GET {base}{service.health_path} until 200, within {seconds(within)}",
            check=HttpWait(base + service.health_path, within=within, interval=0.5),
        ),
        Op(
            LOCAL,
            "http",
            f"POST {base}/v1/chat/completions (model {shown}, max_tokens 1, streamed): "
            f"first token within {seconds(ttft)}",
            check=FirstToken(base, service.model, ttft),
        ),
    ]


class ReadyAction(Action[ReadyStep]):
    step = ReadyStep
    checks = (HttpWait, FirstToken)

    def unit(self, step: ReadyStep, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        service = planner.service(step.args.service, scope)
        return Unit(node.name, ready_ops(node, service, step.args.ttft, step.args.within), [])
