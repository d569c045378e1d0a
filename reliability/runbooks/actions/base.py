"""What every runbook action is, and the registry that lists them.

An action is one module of this package holding everything about one `action:` of a
runbook file: its step model (the `args` it takes and the facts the checks read: where it
runs, whether it changes state, how it can be undone), its plan (the operations it sends to
each target, built with the planner's helpers), and the checks it performs from this host
(frozen dataclasses with a `perform` method, see checks.py). The registry, built from the
one list in `actions/__init__.py`, is where the runbook file's step union (spec.py), the
planner (plan.py) and the executor's record of undo operations look an action up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import reduce
from operator import or_
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args

from pydantic import Field, model_validator

from reliability.config import Name, NodeConfig, Strict
from reliability.durations import Duration
from reliability.runbooks.ops import Op, Unit
from reliability.runbooks.template import TemplateField

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope
    from reliability.runbooks.spec import Runbook

Loc = tuple[str | int, ...]
ShellTemplate = Annotated[str, TemplateField("shell"), Field(min_length=1)]
UrlTemplate = Annotated[str, TemplateField("url"), Field(min_length=1)]
TextTemplate = Annotated[str, TemplateField("text")]
NameTemplate = Annotated[str, TemplateField("name"), Field(min_length=1)]
ImageTemplate = Annotated[str, TemplateField("image"), Field(min_length=1)]

DIGEST = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._/:-]*@)?sha256:[0-9a-f]{64}")
KNOWN_GOOD = "known-good"


# --- what every step has ---------------------------------------------------------------
class When(Strict):
    """Run the step only if `value` (a template) compares as asked: no expressions, no eval."""

    value: TextTemplate
    equals: TextTemplate | None = None
    not_equals: TextTemplate | None = None
    in_: list[TextTemplate] | None = Field(None, alias="in")
    not_in: list[TextTemplate] | None = None

    @model_validator(mode="after")
    def _one_test(self) -> When:
        tests = (self.equals, self.not_equals, self.in_, self.not_in)
        if sum(t is not None for t in tests) != 1:
            raise ValueError("give exactly one of `equals`, `not_equals`, `in`, `not_in`")
        return self


class UndoCommand(Strict):
    """A shell command that reverses the step, run where the step ran."""

    command: ShellTemplate
    timeout: Duration = 60.0


Undo = Literal["restore"] | UndoCommand


class StepBase(Strict):
    """A step that runs once (on the balancer, or here). Each action's step adds
    `action: Literal["name"]` and `args`."""

    id: Name
    description: str = ""
    timeout: Duration = Field(60.0, description="per attempt, per node")
    retries: int = Field(0, ge=0, le=10)
    backoff: Duration = Field(5.0, description="wait before the first retry; doubles each time")
    when: When | None = None
    undo: Undo | None = None
    release_locks: bool = Field(
        False,
        description="the step only waits or observes: the run lets go of its service locks "
        "during it (other runs may act meanwhile) and takes them back before its next step",
    )

    # Facts of the action, read by the checks and the plan: where it runs, what it changes.
    per_node: ClassVar[bool] = False
    changes_state: ClassVar[bool] = False

    @property
    def mutates(self) -> bool:
        return self.changes_state


class NodeStep(StepBase):
    """A step that runs on each node of a target group, in batches."""

    nodes: str = Field(..., description="the target group it runs on")
    batch: int | None = Field(None, ge=1, description="nodes at a time; none: all at once")
    max_fail_percent: int = Field(0, ge=0, le=100)

    per_node: ClassVar[bool] = True


# --- the action ----------------------------------------------------------------------------
S = TypeVar("S", bound=StepBase)


class Action(Generic[S]):
    """One kind of step. Subclasses set `step` and implement `plan` (a step that runs once)
    or `unit` (a step whose model is a NodeStep: the unit on one node); the rest has
    defaults."""

    step: ClassVar[type[StepBase]]
    # `undo: restore` is allowed, and this says what it does; None: write the command.
    restores: ClassVar[str | None] = None
    # Added to "this step changes nothing, so it has no undo".
    undo_hint: ClassVar[str] = ""
    # The checks its operations (and their undo) carry, so a recorded undo can be read back.
    checks: ClassVar[tuple[type, ...]] = ()

    @property
    def kind(self) -> str:
        """The `action:` name, from the step model's `action` literal."""
        return str(get_args(self.step.model_fields["action"].annotation)[0])

    def problems(
        self, step: S, loc: Loc, runbook: Runbook, seen: dict[str, str]
    ) -> Iterator[tuple[Loc, str]]:
        """What the models cannot see in this step, with its place; `seen` maps the ids of
        the earlier steps to their action."""
        return iter(())

    def needs_person(self, step: S, loc: Loc) -> Iterator[tuple[Loc, str]]:
        """Why the step cannot pass in a run that no person watches (the daemon's), with
        the place to change; nothing when it can."""
        return iter(())

    def skipped(self, step: S, planner: Planner) -> str | None:
        """Why the step does nothing in this plan (its `when` held), or None."""
        return None

    def plan(self, step: S, planner: Planner) -> list[Unit]:
        """The units of a step that runs once."""
        raise NotImplementedError(f"{self.kind} runs on nodes: it plans with `unit`")

    def unit(self, step: S, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        """The unit of a per-node step on `node`; `scope` has `target` bound to it."""
        raise NotImplementedError(f"{self.kind} runs once: it plans with `plan`")

    def units(
        self, step: S, nodes: list[NodeConfig], planner: Planner
    ) -> tuple[list[list[str]], list[Unit]]:
        """A per-node step's batches (the targets of each, in turn) and units on `nodes`:
        one unit per node, `batch` nodes at a time (all at once without one)."""
        assert isinstance(step, NodeStep)
        size = step.batch or len(nodes)
        batches = [[n.name for n in nodes[i : i + size]] for i in range(0, len(nodes), size)]
        units = [self.unit(step, n, planner.scope.bind("target", n), planner) for n in nodes]
        return batches, units


def undo_commands(step: StepBase, where: str, scope: Scope, planner: Planner) -> list[Op]:
    """The step's `undo: {command: ...}` as the operation that reverses it, if it has one."""
    if isinstance(step.undo, UndoCommand):
        return [planner.command(where, step.undo.command, scope)]
    return []


class Registry:
    """The actions a runbook may use, by name, in the order they were registered."""

    def __init__(self, actions: Iterable[Action[Any]]) -> None:
        self._actions: dict[str, Action[Any]] = {}
        self._checks: dict[str, type] = {}
        for action in actions:
            if action.kind in self._actions:
                raise ValueError(f"two actions are named {action.kind!r}")
            self._actions[action.kind] = action
            for check in action.checks:
                known = self._checks.setdefault(check.__name__, check)
                if known is not check:
                    raise ValueError(f"two checks are named {check.__name__!r}")

    def __getitem__(self, kind: str) -> Action[Any]:
        return self._actions[kind]

    def __iter__(self) -> Iterator[Action[Any]]:
        return iter(self._actions.values())

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._actions)

    def of(self, step: StepBase) -> Action[Any]:
        """The action a parsed step belongs to."""
        return self._actions[step.action]  # type: ignore[attr-defined]

    def step_union(self) -> Any:
        """The type of one step in a runbook file: the actions' steps, told apart by
        `action` (so an unknown name is one clear error naming the known ones)."""
        union = reduce(or_, (a.step for a in self._actions.values()))
        return Annotated[union, Field(discriminator="action")]

    def check(self, name: str) -> type:
        """The check class a recorded undo operation names."""
        return self._checks[name]
