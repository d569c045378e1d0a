"""`ssh`: a shell command on each node of a target group; `changes: true` when it changes
state, and then it needs `undo: {command: ...}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from reliability.config import NodeConfig, Strict
from reliability.runbooks.actions.base import Action, NodeStep, ShellTemplate, undo_commands
from reliability.runbooks.ops import Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope


class SshArgs(Strict):
    command: ShellTemplate
    changes: bool = Field(False, description="true: the command changes state (needs `undo`)")


class SshStep(NodeStep):
    action: Literal["ssh"]
    args: SshArgs

    @property
    def mutates(self) -> bool:
        return self.args.changes


class SshAction(Action[SshStep]):
    step = SshStep
    undo_hint = "; if the command changes state, add `changes: true`"

    def unit(self, step: SshStep, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        run = [planner.command(node.name, step.args.command, scope, step.args.changes)]
        return Unit(node.name, run, undo_commands(step, node.name, scope, planner))
