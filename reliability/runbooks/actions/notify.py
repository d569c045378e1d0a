"""`notify`: a line on the run's incident (its timeline, so Slack posts it in the thread)."""

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


class NotifyArgs(Strict):
    text: TextTemplate = Field(..., min_length=1)


class NotifyStep(StepBase):
    action: Literal["notify"]
    args: NotifyArgs


@dataclass(frozen=True, slots=True)
class Notify:
    text: str

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        return run.note(self.text)


class NotifyAction(Action[NotifyStep]):
    step = NotifyStep
    checks = (Notify,)

    def plan(self, step: NotifyStep, planner: Planner) -> list[Unit]:
        text = planner.text(step.args.text, "text")
        notify = Op(LOCAL, "notify", text, note="the incident's Slack thread", check=Notify(text))
        return [Unit(LOCAL, [notify], [])]
