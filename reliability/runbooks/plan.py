"""A plan: what a run of a runbook would do, step by step and node by node, with every
command as it would be sent and the undo of each step. Built from the spec, the checked
parameters and the config alone: no connection, no file, no database.

Each step is planned by its action (actions/, looked up in the registry); the planner
renders placeholders, locks services, selects target groups and keeps what actions follow
through the steps, such as the balancer's upstream (actions/upstream.py).

Target groups and pools are chosen from the fleet's live state (`LiveNode`, read by the
executor's hooks from the fleet domain; the config's first picture when none is given):
`pool: P` is who serves P now, `role: standby` the first free standby, warm first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from reliability.config import Config, NodeConfig, NodeState, ServiceConfig
from reliability.runbooks.actions import REGISTRY
from reliability.runbooks.actions.base import DIGEST, KNOWN_GOOD, NodeStep, StepBase, When
from reliability.runbooks.errors import PlanError, ScopeError
from reliability.runbooks.ops import AtRun, Op, Unit
from reliability.runbooks.scope import Scope, as_text
from reliability.runbooks.spec import Runbook
from reliability.runbooks.template import Kind, render

__all__ = [
    "KnownGood",
    "LiveNode",
    "Plan",
    "PlanError",
    "PlannedStep",
    "Planner",
    "Unit",
    "first_picture",
    "make_plan",
]
T = TypeVar("T")
FREE: tuple[NodeState, ...] = ("warm-standby", "standby")  # the order standbys are taken in


@dataclass(frozen=True, slots=True)
class LiveNode:
    """A fleet node as it is now: its state, and the pool and service it serves (serving),
    or last served (out, repair)."""

    name: str
    state: NodeState
    pool: str | None = None
    service: str | None = None
    reason: str | None = None


def first_picture(config: Config) -> dict[str, LiveNode]:
    """The fleet as the config draws it, before any run changed it."""
    live = {}
    for node in config.nodes:
        if node.first_state is not None:
            service = config.pool_service(node.pool) if node.pool else None
            live[node.name] = LiveNode(
                node.name, node.first_state, node.pool, service.name if service else None
            )
    return live


@dataclass(frozen=True, slots=True)
class PlannedStep:
    id: str
    action: str
    description: str
    timeout: float
    retries: int
    backoff: float
    skipped: str | None = None
    batches: list[list[str]] = field(default_factory=list)
    max_fail_percent: int = 0
    units: list[Unit] = field(default_factory=list)
    # The run lets go of its locks during the step (it only waits or observes).
    release_locks: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    runbook: str
    params: dict[str, str]
    locks: list[str]
    steps: list[PlannedStep]
    # The pool each service serves from after a successful run, where a step switched it.
    switches: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The plan for scripts: every operation as `Op.shown` prints it."""
        steps = []
        for step in self.steps:
            shown = {f.name: getattr(step, f.name) for f in fields(step) if f.name != "units"}
            shown["units"] = [
                {
                    "target": u.target,
                    "ops": [op.shown() for op in u.ops],
                    "undo": [op.shown() for op in u.undo],
                    "cleanup": [op.shown() for op in u.cleanup],
                }
                for u in step.units
            ]
            steps.append(shown)
        return {"runbook": self.runbook, "params": self.params, "locks": self.locks, "steps": steps}


KnownGood = Callable[[ServiceConfig], "str | AtRun"]


def unknown_image(service: ServiceConfig) -> AtRun:
    """The known-good image as a plan shows it when the registry is not read."""
    return AtRun(f"known-good image of {service.name}, from the images registry")


def make_plan(
    runbook: Runbook,
    params: dict[str, Any],
    config: Config,
    *,
    known_good: KnownGood = unknown_image,
    fleet: dict[str, LiveNode] | None = None,
) -> Plan:
    """The plan of `runbook` with checked `params` (see params.resolve) on `config`;
    `known_good` gives a service's known-good image (a run reads the registry), `fleet`
    each node's live state (a run reads the fleet; none: the config's first picture)."""
    live = first_picture(config) if fleet is None else fleet
    return Planner(runbook, config, Scope(config, params), known_good, live).plan()


class Planner:
    """Builds a plan step by step, each step by its action (actions/), and is what an
    action plans with: placeholders rendered (`text`), services looked up and locked
    (`service`), target groups (`group`) and pools (`pool_nodes`) from the fleet's live
    state (`fleet`, followed through the steps), images (`image`), commands (`command`),
    the pool each service ends on (`switches`), and state an action follows through the
    steps of one plan (`state`)."""

    def __init__(
        self,
        runbook: Runbook,
        config: Config,
        scope: Scope,
        known_good: KnownGood,
        fleet: dict[str, LiveNode],
    ) -> None:
        self.runbook, self.config, self.scope = runbook, config, scope
        self.known_good = known_good
        self.fleet = dict(fleet)
        self._first = dict(fleet)  # as the run finds it, before any step of this plan
        self.locks: list[str] = []
        self.switches: dict[str, str] = {}
        self._state: dict[type, Any] = {}
        # A target group is chosen once per plan: `standby` is the same node in every step.
        self._groups: dict[str, list[NodeConfig]] = {}

    def plan(self) -> Plan:
        steps = [self._step(step) for step in self.runbook.steps]
        shown = {k: as_text(v) for k, v in self.scope.values.items()}
        return Plan(self.runbook.name, shown, self.locks, steps, self.switches)

    def _step(self, step: StepBase) -> PlannedStep:
        action = REGISTRY.of(step)
        try:
            base = PlannedStep(
                step.id,
                action.kind,
                step.description,
                step.timeout,
                step.retries,
                step.backoff,
                release_locks=step.release_locks,
            )
            if step.when is not None and not self._holds(step.when):
                return replace(base, skipped=f"`when` is false: {self._show_when(step.when)}")
            skipped = action.skipped(step, self)
            if skipped is not None:
                return replace(base, skipped=skipped)
            if not isinstance(step, NodeStep):
                return replace(base, units=action.plan(step, self))
            batches, units = action.units(step, self.group(step.nodes), self)
            return replace(
                base,
                batches=batches,
                max_fail_percent=step.max_fail_percent,
                units=units,
            )
        except ScopeError as exc:
            raise PlanError(f"step {step.id}: {exc}") from None

    # --- what actions plan with ----------------------------------------------------------
    def state(self, kind: type[T]) -> T:
        """This plan's instance of `kind` (made on first use, with no arguments): what an
        action follows through the steps, such as a balancer's upstream."""
        if kind not in self._state:
            self._state[kind] = kind()
        return self._state[kind]

    def text(self, template: str, kind: Kind, scope: Scope | None = None) -> str:
        return render(template, kind, (scope or self.scope).text)

    def service(self, template: str, scope: Scope | None = None) -> ServiceConfig:
        """The service `template` names; the run locks it."""
        name = self.text(template, "name", scope)
        service = next((s for s in self.config.services if s.name == name), None)
        if service is None:
            raise ScopeError(f"no service is named {name!r}")
        if name not in self.locks:
            self.locks.append(name)
        return service

    def group(self, name: str) -> list[NodeConfig]:
        """The nodes of target group `name` as the fleet is when the plan first asks
        (the same nodes in every later step); ScopeError when it selects none."""
        if name in self._groups:
            return self._groups[name]
        group = self.runbook.targets[name]
        if group.node is not None:
            rendered = self.text(group.node, "name")
            nodes = [n for n in self.config.nodes if n.name == rendered]
            what = f"node {rendered!r}"
        elif group.pool is not None:
            rendered = self.text(group.pool, "name")
            nodes, what = self.pool_nodes(rendered), f"pool {rendered!r}"
        elif group.role == "standby":
            nodes, what = self._free_standbys(), "standby"
        else:
            nodes = [n for n in self.config.nodes if group.selects(n, self.fleet.get(n.name))]
            what = str(group.role)
        if group.exclude is not None:
            left_out = {n.name for n in self.group(group.exclude)}
            nodes = [n for n in nodes if n.name not in left_out]
            what += f" less group {group.exclude!r}"
        nodes = nodes[: group.limit]
        if not nodes and group.role == "standby":
            raise ScopeError(self._no_standby(group.for_pool))
        if not nodes:
            raise ScopeError(f"target group {name!r} selects no node ({what})")
        self._groups[name] = nodes
        return nodes

    def pool_nodes(self, pool: str) -> list[NodeConfig]:
        """The nodes serving `pool` now, in config order: a standby that took over is one,
        a node that is out is not."""
        return [
            n
            for n in self.config.nodes
            if (live := self.fleet.get(n.name)) is not None
            and live.state == "serving"
            and live.pool == pool
        ]

    def was(self, node: str) -> LiveNode | None:
        """The node's live state as the run finds it, before any step of this plan."""
        return self._first.get(node)

    def _free_standbys(self) -> list[NodeConfig]:
        free = [n for n in self.config.nodes if n.name in self.fleet]
        free = [n for n in free if self.fleet[n.name].state in FREE]
        return sorted(free, key=lambda n: FREE.index(self.fleet[n.name].state))

    def _no_standby(self, pool_template: str | None) -> str:
        taken = ", ".join(
            f"{n.name} {live.state}{f' {live.pool}' if live.pool else ''}"
            for n in self.config.nodes
            if (live := self.fleet.get(n.name)) is not None and n.first_state == "standby"
        )
        where = ""
        if pool_template is not None:
            pool = self.text(pool_template, "name")
            service = self.config.pool_service(pool)
            where = f" for pool {pool}" + (f" of service {service.name}" if service else "")
        return (
            f"no free standby{where}: every standby serves or is out "
            f"({taken or 'none configured'}); "
            "put one back with `reliability nodes return NODE` or add a standby node to the config"
        )

    def image(self, template: str, service: ServiceConfig) -> str | AtRun:
        """An image pinned by digest, or the service's known-good one."""
        if template == KNOWN_GOOD:
            return self.known_good(service)
        image = self.text(template, "image")
        if not DIGEST.fullmatch(image) and service.container.image_policy == "digest":
            raise ScopeError(
                f"image {image!r} is not pinned by digest (REF@sha256:…), which "
                f"{service.name}'s container.image_policy asks for"
            )
        return image

    def command(self, where: str, template: str, scope: Scope, changes: bool = True) -> Op:
        """A shell command of the runbook, each placeholder one quoted word."""
        return Op(where, "run", self.text(template, "shell", scope), changes=changes)

    # --- `when` ----------------------------------------------------------------------------
    def _holds(self, when: When) -> bool:
        value = self.text(when.value, "text")
        if when.equals is not None:
            return value == self.text(when.equals, "text")
        if when.not_equals is not None:
            return value != self.text(when.not_equals, "text")
        if when.in_ is not None:
            return value in [self.text(t, "text") for t in when.in_]
        assert when.not_in is not None
        return value not in [self.text(t, "text") for t in when.not_in]

    def _show_when(self, when: When) -> str:
        ops_ = {"equals": "==", "not_equals": "!=", "in_": "in", "not_in": "not in"}
        name, operand = next((k, getattr(when, k)) for k in ops_ if getattr(when, k) is not None)
        shown = (
            [self.text(t, "text") for t in operand]
            if isinstance(operand, list)
            else self.text(operand, "text")
        )
        return f"{self.text(when.value, 'text')!r} {ops_[name]} {shown!r}"
