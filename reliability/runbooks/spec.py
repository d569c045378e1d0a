"""The runbook file (`runbooks/NAME.yaml`): typed parameters, named target groups, and steps.

Strict like the config: unknown keys are errors, every action's arguments have their own
model, and a step whose action changes state must say how it is undone. What one field
cannot see (names that refer to each other, placeholders, shell safety) is checked by
`problems()`, so the loader reports everything at once, each at its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args, get_origin

from pydantic import BaseModel, Field, field_validator, model_validator

from reliability.config import Name, NodeConfig, NodeState, Strict
from reliability.runbooks.actions import REGISTRY
from reliability.runbooks.actions.base import (
    DIGEST,
    Loc,
    NameTemplate,
    StepBase,
    UndoCommand,
)
from reliability.runbooks.scope import TARGET, ValueKind, path_problem
from reliability.runbooks.template import (
    Kind,
    TemplateField,
    placeholders,
    shell_placeholders,
    shell_problems,
)

ParamName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]


class LiveState(Protocol):
    """What a target group reads of a node's live state (plan.LiveNode)."""

    @property
    def state(self) -> NodeState: ...


# --- parameters ------------------------------------------------------------------------
class _Param(Strict):
    description: str = ""

    @property
    def required(self) -> bool:
        """A parameter without a default must be given on every run."""
        return getattr(self, "default", None) is None

    def parse(self, raw: str) -> str | int:
        """The value of `--param NAME=raw`, or ValueError saying what to write instead.
        Names of nodes, pools and services are checked against the config later."""
        return raw

    @model_validator(mode="after")
    def _default_fits(self) -> _Param:
        default = getattr(self, "default", None)
        if default is not None:
            self.parse(str(default))
        return self


class StringParam(_Param):
    type: Literal["string"]
    pattern: str = Field(..., description="the whole value must match this regular expression")
    default: str | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    def parse(self, raw: str) -> str:
        if not re.fullmatch(self.pattern, raw):
            raise ValueError(f"{raw!r} does not match the pattern {self.pattern!r}")
        return raw


class ChoiceParam(_Param):
    type: Literal["choice"]
    choices: list[str] = Field(..., min_length=1)
    default: str | None = None

    def parse(self, raw: str) -> str:
        if raw not in self.choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(self.choices)}")
        return raw


class IntParam(_Param):
    type: Literal["int"]
    min: int | None = None
    max: int | None = None
    default: int | None = None

    def parse(self, raw: str) -> int:
        if not re.fullmatch(r"-?\d+", raw):
            raise ValueError(f"{raw!r} is not a whole number")
        value = int(raw)
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise ValueError(f"{value} is outside {self.min}..{self.max}")
        return value


class NodeParam(_Param):
    type: Literal["node"]
    default: str | None = None


class PoolParam(_Param):
    type: Literal["pool"]
    of: str | None = Field(None, description="a service parameter the pool must belong to")
    default: str | None = None


class ServiceParam(_Param):
    type: Literal["service"]
    default: str | None = None


class ImageDigestParam(_Param):
    type: Literal["image_digest"]
    default: str | None = None

    def parse(self, raw: str) -> str:
        if not DIGEST.fullmatch(raw):
            raise ValueError(
                f"{raw!r} is not an image digest; write sha256:<64 hex> or REF@sha256:…"
            )
        return raw


Param = Annotated[
    StringParam | ChoiceParam | IntParam | NodeParam | PoolParam | ServiceParam | ImageDigestParam,
    Field(discriminator="type"),
]
PARAM_KINDS: dict[str, ValueKind] = {"node": "node", "pool": "pool", "service": "service"}


# --- targets and conditions ----------------------------------------------------------
class TargetGroup(Strict):
    """Nodes a step runs on, chosen from the fleet's live state (plan.Planner.group), in
    config order, at most `limit`: one node; a pool (the nodes serving it now); or a role:
    `standby` the free standbys (warm first), `serving` the nodes serving any pool, `lb` and
    `other` as the config has them; less the nodes of group `exclude`."""

    node: NameTemplate | None = None
    pool: NameTemplate | None = None
    role: Literal["serving", "standby", "lb", "other"] | None = None
    limit: int | None = Field(None, ge=1)
    exclude: Name | None = Field(
        None, description="another target group (without an `exclude`) whose nodes are left out"
    )
    for_pool: NameTemplate | None = Field(
        None, description="role standby: the pool it is taken for, named when none is free"
    )

    @model_validator(mode="after")
    def _one_selector(self) -> TargetGroup:
        if sum(x is not None for x in (self.node, self.pool, self.role)) != 1:
            raise ValueError("choose nodes by exactly one of `node`, `pool`, `role`")
        if self.for_pool is not None and self.role != "standby":
            raise ValueError("`for_pool` goes with `role: standby`")
        return self

    def selects(self, node: NodeConfig, live: LiveState | None) -> bool:
        """Whether `node` is in a role group (`serving`, `lb`, `other`); `live` is its
        state in the fleet (None: not a fleet node)."""
        if self.role == "serving":
            return live is not None and live.state == "serving"
        return live is None and node.role == self.role


# --- steps: one model per action, from the registry (actions/) ---------------------------
Step = REGISTRY.step_union()
ACTIONS = REGISTRY.kinds


class Runbook(Strict):
    name: Name
    description: str = Field(..., min_length=1)
    params: dict[ParamName, Param] = {}
    targets: dict[Name, TargetGroup] = {}
    steps: list[Step] = Field(..., min_length=1)
    source: Path | None = Field(None, exclude=True)

    def no_target(self, name: str) -> str:
        """The problem of a step naming target group `name`, which is not defined."""
        defined = ", ".join(self.targets) or "none yet"
        return f"no target group is named {name!r}; define it under `targets` ({defined})"


# --- checks across fields --------------------------------------------------------------
def problems(rb: Runbook) -> Iterator[tuple[Loc, str]]:
    """What the models cannot see field by field, each with where it is in the file."""
    kinds: dict[str, ValueKind] = {
        n: PARAM_KINDS.get(p.type, "value") for n, p in rb.params.items()
    }
    if TARGET in kinds:
        yield ("params", TARGET), f"`{TARGET}` is reserved for the node a step runs on"
    for name, p in rb.params.items():
        if isinstance(p, PoolParam) and p.of is not None and kinds.get(p.of) != "service":
            yield ("params", name, "of"), f"{p.of!r} is not a service parameter"
    for name, group in rb.targets.items():
        yield from _templates(group, ("targets", name), kinds)
        other = rb.targets.get(group.exclude) if group.exclude is not None else None
        if group.exclude is not None and (other is None or other.exclude is not None):
            yield (
                ("targets", name, "exclude"),
                rb.no_target(group.exclude)
                if other is None
                else f"group {group.exclude!r} excludes a group itself; exclude one that does not",
            )
    seen: dict[str, str] = {}
    for i, step in enumerate(rb.steps):
        loc: Loc = ("steps", i)
        if step.id in seen:
            yield (*loc, "id"), f"step id {step.id!r} is used twice"
        action = REGISTRY.of(step)
        if step.per_node and step.nodes not in rb.targets:
            yield (*loc, "nodes"), rb.no_target(step.nodes)
        scope = {**kinds, TARGET: "node"} if step.per_node else kinds
        yield from _templates(step.args, (*loc, "args"), scope)
        if step.when is not None:
            yield from _templates(step.when, (*loc, "when"), kinds)
        if isinstance(step.undo, UndoCommand):
            yield from _templates(step.undo, (*loc, "undo"), scope)
        yield from _undo_problems(step, loc)
        if step.release_locks and step.mutates:
            yield (
                (*loc, "release_locks"),
                f"this {step.action} step changes state, so it keeps the run's locks; "
                "`release_locks` is for steps that only wait or observe",
            )
        yield from action.problems(step, loc, rb, seen)
        seen[step.id] = step.action


def _undo_problems(step: StepBase, loc: Loc) -> Iterator[tuple[Loc, str]]:
    registered = REGISTRY.of(step)
    action, restores = registered.kind, registered.restores
    if step.mutates and step.undo is None:
        how = f"`undo: restore` ({restores}) or " if restores else ""
        yield (
            (*loc, "undo"),
            (
                f"{action} changes state, so the step needs `undo`: write {how}"
                "`undo: {command: ...}`, the command that reverses it"
            ),
        )
    elif step.undo is not None and not step.mutates:
        hint = registered.undo_hint
        yield (*loc, "undo"), f"this {action} step changes nothing, so it has no undo{hint}"
    elif step.undo == "restore" and not restores:
        yield (
            (*loc, "undo"),
            (
                f"{action} cannot restore on its own; write the command that reverses it: "
                "`undo: {command: ...}`"
            ),
        )


def _kind(annotation: Any, metadata: list[Any]) -> Kind | None:
    """The template kind a field's type is marked with, looking through Optional and list."""
    for m in metadata:
        if isinstance(m, TemplateField):
            return m.kind
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _kind(args[0], list(args[1:]))
    return next((k for k in (_kind(a, []) for a in args) if k), None)


def template_fields(model: BaseModel, loc: Loc = ()) -> Iterator[tuple[Loc, str, Kind]]:
    """Every template value in `model` (recursively), with its location and kind."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = field.alias or name
        kind = _kind(field.annotation, list(field.metadata))
        if isinstance(value, BaseModel):
            yield from template_fields(value, (*loc, key))
        elif kind is not None and isinstance(value, str):
            yield (*loc, key), value, kind
        elif kind is not None and isinstance(value, list):
            yield from (((*loc, key, i), v, kind) for i, v in enumerate(value))


def _templates(
    model: BaseModel, loc: Loc, kinds: dict[str, ValueKind]
) -> Iterator[tuple[Loc, str]]:
    for where, text, kind in template_fields(model, loc):
        if kind == "shell":
            found = [p for p in shell_placeholders(text) if p.context == "word"]
            yield from ((where, problem) for problem in shell_problems(text, kinds.__contains__))
        else:
            found = placeholders(text)
        for p in found:
            problem = path_problem(p.path, kinds)
            if problem:
                yield where, problem
