"""`record_deploy`: write each node's deploy of an image into the images registry (through
the run's `record_deploy`, which flows.py connects to the images domain)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from reliability.config import NodeConfig, Strict
from reliability.runbooks.actions.base import Action, ImageTemplate, NameTemplate, NodeStep
from reliability.runbooks.checks import OpOutcome, RunContext
from reliability.runbooks.ops import LOCAL, AtRun, Op, Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope


class RecordDeployArgs(Strict):
    service: NameTemplate
    image: ImageTemplate


class RecordDeployStep(NodeStep):
    action: Literal["record_deploy"]
    args: RecordDeployArgs


@dataclass(frozen=True, slots=True)
class Record:
    service: str
    node: str
    image: str | AtRun

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        return run.record_deploy(service=self.service, node=self.node, image=str(self.image))


class RecordDeployAction(Action[RecordDeployStep]):
    step = RecordDeployStep
    checks = (Record,)

    def unit(
        self, step: RecordDeployStep, node: NodeConfig, scope: Scope, planner: Planner
    ) -> Unit:
        service = planner.service(step.args.service, scope)
        image = planner.image(step.args.image, service)
        detail = f"deploy of {image} for {service.name} on {node.name}, into the images registry"
        record = Record(service.name, node.name, image)
        return Unit(node.name, [Op(LOCAL, "record", detail, check=record)], [])
