"""`confirm`: stop the run unless the prompt is approved, by whom its `approval` says.

- `terminal` (default): a person at the CLI answers; a run with no one to ask stops.
- `auto`: a run that may go on its own passes it (the daemon, or the CLI with `--yes`),
  recorded in the run's log as "approved automatically by daemon" (or "by --yes"); a
  person at the CLI is asked otherwise.
- `slack`: asked in the incident's Slack thread with Approve / Reject; the first allowed
  answer (`slack.runbook_users`) decides, none within the step's timeout fails closed. Who
  approved is in the run's record ("approved in Slack by @ana"). A run with no incident
  has no thread to ask in and stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from reliability.config import Strict
from reliability.runbooks.actions.base import Action, Loc, StepBase, TextTemplate
from reliability.runbooks.checks import OpOutcome, RunContext
from reliability.runbooks.ops import LOCAL, Op, Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner

Approval = Literal["terminal", "auto", "slack"]


class ConfirmArgs(Strict):
    prompt: TextTemplate = Field(..., min_length=1)
    approval: Approval = Field(
        "terminal",
        description="who approves: a person at the CLI (terminal), a run allowed to go on "
        "its own (auto: the daemon or --yes), or the incident's Slack thread (slack)",
    )


class ConfirmStep(StepBase):
    action: Literal["confirm"]
    args: ConfirmArgs


@dataclass(frozen=True, slots=True)
class Confirm:
    prompt: str
    approval: Approval = "terminal"

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        return run.confirm(self.prompt, self.approval, deadline)


class ConfirmAction(Action[ConfirmStep]):
    step = ConfirmStep
    checks = (Confirm,)

    def plan(self, step: ConfirmStep, planner: Planner) -> list[Unit]:
        prompt = planner.text(step.args.prompt, "text")
        approval = step.args.approval
        confirm = Op(
            LOCAL,
            "confirm",
            prompt,
            note=f"stops unless approved (approval: {approval})",
            check=Confirm(prompt, approval),
        )
        return [Unit(LOCAL, [confirm], [])]

    def needs_person(self, step: ConfirmStep, loc: Loc) -> Iterator[tuple[Loc, str]]:
        if step.args.approval == "terminal":
            yield (*loc, "args", "approval"), "a person at a terminal approves it"
