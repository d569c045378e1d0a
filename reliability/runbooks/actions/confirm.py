"""`confirm`: stop the run unless a person approves the prompt (`--yes` does not answer it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from reliability.config import Strict
from reliability.runbooks.actions.base import Action, StepBase, TextTemplate
from reliability.runbooks.checks import OpOutcome, RunContext
from reliability.runbooks.ops import LOCAL, Op, Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner


class ConfirmArgs(Strict):
    prompt: TextTemplate = Field(..., min_length=1)


class ConfirmStep(StepBase):
    action: Literal["confirm"]
    args: ConfirmArgs


@dataclass(frozen=True, slots=True)
class Confirm:
    prompt: str

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        approved = run.confirm(self.prompt)
        return OpOutcome(approved, "approved" if approved else "not approved")


class ConfirmAction(Action[ConfirmStep]):
    step = ConfirmStep
    checks = (Confirm,)

    def plan(self, step: ConfirmStep, planner: Planner) -> list[Unit]:
        prompt = planner.text(step.args.prompt, "text")
        confirm = Op(LOCAL, "confirm", prompt, note="stops unless approved", check=Confirm(prompt))
        return [Unit(LOCAL, [confirm], [])]
