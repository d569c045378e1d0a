"""A plan: what a run of a runbook would do, step by step and node by node, with every
command as it would be sent and the undo of each step. Built from the spec, the checked
parameters and the config alone: no connection, no file, no database.

The load balancer's upstream is followed through the steps, starting from the service's
`active_pool` as configured, so each rewrite shows the file a run would write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from reliability.config import Config, NodeConfig, ServiceConfig
from reliability.runbooks import ops
from reliability.runbooks.ops import LOCAL, AtRun, Op
from reliability.runbooks.scope import Scope, ScopeError, as_text, lb_node, load_balancer
from reliability.runbooks.spec import (
    DIGEST,
    KNOWN_GOOD,
    AnyStep,
    ConfirmStep,
    DeployImageStep,
    DrainStep,
    HttpCheckStep,
    LbSetPoolStep,
    NodeStep,
    NotifyStep,
    ReadyStep,
    RecordDeployStep,
    Runbook,
    SshStep,
    UndoCommand,
    When,
)
from reliability.runbooks.template import Kind, render

LB_VERIFY = 30.0  # longest wait for the service to answer through the balancer after a switch


class PlanError(ValueError):
    """The runbook cannot run with these parameters on this config (a group selects no
    node, a placeholder names something the config lacks)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """What a step does on one target: a node, the load balancer, or the local host."""

    target: str
    ops: list[Op]
    undo: list[Op]


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
) -> Plan:
    """The plan of `runbook` with checked `params` (see params.resolve) on `config`;
    `known_good` gives a service's known-good image (a run reads the registry)."""
    return _Planner(runbook, config, Scope(config, params), known_good).plan()


class _Planner:
    def __init__(
        self, runbook: Runbook, config: Config, scope: Scope, known_good: KnownGood
    ) -> None:
        self.runbook, self.config, self.scope = runbook, config, scope
        self.known_good = known_good
        self.locks: list[str] = []
        self.switches: dict[str, str] = {}
        # Upstream members per service (node name -> serving), followed through the steps,
        # and as they were before each step that rewrote one (for `restore_from`).
        self.upstreams: dict[str, dict[str, bool]] = {}
        self.before: dict[str, tuple[str, dict[str, bool]]] = {}

    def plan(self) -> Plan:
        steps = [self._step(step) for step in self.runbook.steps]
        shown = {k: as_text(v) for k, v in self.scope.values.items()}
        return Plan(self.runbook.name, shown, self.locks, steps, self.switches)

    def _step(self, step: AnyStep) -> PlannedStep:
        try:
            base = PlannedStep(
                step.id,
                step.action,
                step.description,
                step.timeout,
                step.retries,
                step.backoff,
            )
            if step.when is not None and not self._holds(step.when):
                return replace(base, skipped=f"`when` is false: {self._show_when(step.when)}")
            earlier = step.args.restore_from if isinstance(step, LbSetPoolStep) else None
            if earlier is not None and earlier not in self.before:
                # A skipped rewrite left the file as it was: there is nothing to put back.
                return replace(base, skipped=f"step {earlier} did not rewrite the upstream")
            if isinstance(step, NodeStep):
                return self._node_step(step, base)
            return replace(base, units=self._single(step))
        except ScopeError as exc:
            raise PlanError(f"step {step.id}: {exc}") from None

    # --- helpers -------------------------------------------------------------------------
    def _text(self, template: str, kind: Kind, scope: Scope | None = None) -> str:
        return render(template, kind, (scope or self.scope).text)

    def _service(self, template: str, scope: Scope | None = None) -> ServiceConfig:
        name = self._text(template, "name", scope)
        service = next((s for s in self.config.services if s.name == name), None)
        if service is None:
            raise ScopeError(f"no service is named {name!r}")
        if name not in self.locks:
            self.locks.append(name)
        return service

    def _members(self, step: AnyStep, service: ServiceConfig) -> dict[str, bool]:
        """The upstream of `service`, remembered as it was before `step` first changed it."""
        if service.name not in self.upstreams:
            active = [n.name for n in self.config.nodes if n.pool == service.active_pool]
            self.upstreams[service.name] = dict.fromkeys(active, True)
        members = self.upstreams[service.name]
        self.before.setdefault(step.id, (service.name, dict(members)))
        return members

    def _holds(self, when: When) -> bool:
        value = self._text(when.value, "text")
        if when.equals is not None:
            return value == self._text(when.equals, "text")
        if when.not_equals is not None:
            return value != self._text(when.not_equals, "text")
        if when.in_ is not None:
            return value in [self._text(t, "text") for t in when.in_]
        assert when.not_in is not None
        return value not in [self._text(t, "text") for t in when.not_in]

    def _show_when(self, when: When) -> str:
        ops_ = {"equals": "==", "not_equals": "!=", "in_": "in", "not_in": "not in"}
        name, operand = next((k, getattr(when, k)) for k in ops_ if getattr(when, k) is not None)
        shown = (
            [self._text(t, "text") for t in operand]
            if isinstance(operand, list)
            else self._text(operand, "text")
        )
        return f"{self._text(when.value, 'text')!r} {ops_[name]} {shown!r}"

    def _group(self, name: str) -> list[NodeConfig]:
        group = self.runbook.targets[name]
        chosen = group.node if group.node is not None else group.pool
        rendered = self._text(chosen, "name") if chosen is not None else ""
        nodes = [n for n in self.config.nodes if group.selects(n, rendered)][: group.limit]
        if not nodes:
            what = f"node {rendered!r}" if group.node else f"pool {rendered!r}"
            raise ScopeError(f"target group {name!r} selects no node ({group.role or what})")
        return nodes

    def _image(self, template: str, service: ServiceConfig) -> str | AtRun:
        if template == KNOWN_GOOD:
            return self.known_good(service)
        image = self._text(template, "image")
        if not DIGEST.fullmatch(image):
            raise ScopeError(f"image {image!r} is not pinned by digest (REF@sha256:…)")
        return image

    # --- steps on the nodes of a target group --------------------------------------------
    def _node_step(self, step: NodeStep, base: PlannedStep) -> PlannedStep:
        nodes = self._group(step.nodes)
        size = step.batch or len(nodes)
        batches = [[n.name for n in nodes[i : i + size]] for i in range(0, len(nodes), size)]
        build: Callable[[Any, NodeConfig, Scope], Unit] = {
            "ssh": self._ssh,
            "ready": self._ready,
            "drain": self._drain,
            "deploy_image": self._deploy,
            "record_deploy": self._record,
        }[step.action]
        units = [build(step, n, self.scope.bind("target", n)) for n in nodes]
        return replace(base, batches=batches, max_fail_percent=step.max_fail_percent, units=units)

    def _command(self, where: str, template: str, scope: Scope, changes: bool = True) -> Op:
        return Op(where, "run", self._text(template, "shell", scope), changes=changes)

    def _ssh(self, step: SshStep, node: NodeConfig, scope: Scope) -> Unit:
        run = [self._command(node.name, step.args.command, scope, step.args.changes)]
        undo = []
        if isinstance(step.undo, UndoCommand):
            undo = [self._command(node.name, step.undo.command, scope)]
        return Unit(node.name, run, undo)

    def _ready(self, step: ReadyStep, node: NodeConfig, scope: Scope) -> Unit:
        service = self._service(step.args.service, scope)
        return Unit(node.name, ops.ready_ops(node, service, step.args.ttft, step.args.within), [])

    def _drain(self, step: DrainStep, node: NodeConfig, scope: Scope) -> Unit:
        service = self._service(step.args.service, scope)
        members = self._members(step, service)
        if node.name not in members:
            raise ScopeError(f"{node.name} is not in the upstream of {service.name}")
        members[node.name] = False
        wait = ops.seconds(step.args.wait)
        base = f"http://{ops.host_port(node.address, service.port)}"
        waiting = Op(
            LOCAL,
            "wait",
            f"until {node.name} has no in-flight or streaming request, at most {wait}",
            check=ops.Drained(base, step.args.wait),
        )
        unit = self._lb_unit(step, service, [waiting], scope)
        return Unit(node.name, unit.ops, unit.undo)

    def _deploy(self, step: DeployImageStep, node: NodeConfig, scope: Scope) -> Unit:
        args = step.args
        service = self._service(args.service, scope)
        pool = self._text(args.pool, "name", scope) if args.pool else node.pool
        image = self._image(args.image, service)
        saved = ops.image_key(step.id, node.name)
        run = ops.deploy_ops(node, service, pool, image, saves=saved)
        ready = ops.ready_ops(node, service, args.ttft, args.within) if args.verify else []
        if isinstance(step.undo, UndoCommand):
            undo = [self._command(node.name, step.undo.command, scope)]
        else:
            undo = ops.redeploy_ops(node, service, pool, saved, ttft=args.ttft, within=args.within)
        return Unit(node.name, run + ready, undo)

    def _record(self, step: RecordDeployStep, node: NodeConfig, scope: Scope) -> Unit:
        service = self._service(step.args.service, scope)
        image = self._image(step.args.image, service)
        detail = f"deploy of {image} for {service.name} on {node.name}, into the images registry"
        record = ops.Record(service.name, node.name, image)
        return Unit(node.name, [Op(LOCAL, "record", detail, check=record)], [])

    # --- steps that run once -------------------------------------------------------------
    def _single(self, step: AnyStep) -> list[Unit]:
        if isinstance(step, LbSetPoolStep):
            return [self._lb_set_pool(step)]
        if isinstance(step, HttpCheckStep):
            return [Unit(LOCAL, self._http(step), [])]
        if isinstance(step, ConfirmStep):
            prompt = self._text(step.args.prompt, "text")
            confirm = Op(
                LOCAL, "confirm", prompt, note="stops unless approved", check=ops.Confirm(prompt)
            )
            return [Unit(LOCAL, [confirm], [])]
        assert isinstance(step, NotifyStep)
        text = self._text(step.args.text, "text")
        notify = Op(
            LOCAL, "notify", text, note="the incident's Slack thread", check=ops.Notify(text)
        )
        return [Unit(LOCAL, [notify], [])]

    def _http(self, step: HttpCheckStep) -> list[Op]:
        a = step.args
        url = self._text(a.url, "url")
        if not url.startswith(("http://", "https://")):
            raise ScopeError(f"url {url!r} does not start with http:// or https://")
        body = f" with {a.expect_body!r} in the body" if a.expect_body else ""
        wait = ops.HttpWait(url, a.within, a.method, a.expect_status, a.expect_body, a.interval)
        checks = [
            Op(
                LOCAL,
                "http",
                f"{a.method} {url} until {a.expect_status}{body}, within {ops.seconds(a.within)}",
                check=wait,
            )
        ]
        if a.soak:
            checks.append(
                Op(
                    LOCAL,
                    "http",
                    f"{a.method} {url} every {ops.seconds(a.interval)} for "
                    f"{ops.seconds(a.soak)}; fails above {a.max_error_ratio:.0%} errors",
                    note="a failure undoes the run, newest step first",
                    check=ops.HttpSoak(
                        url,
                        a.soak,
                        a.interval,
                        a.max_error_ratio,
                        a.method,
                        a.expect_status,
                        a.expect_body,
                    ),
                )
            )
        return checks

    def _lb_set_pool(self, step: LbSetPoolStep) -> Unit:
        args = step.args
        service = self._service(args.service)
        members = self._members(step, service)
        if args.pool is not None:
            pool = self._text(args.pool, "name")
            if pool not in service.pools:
                raise ScopeError(f"{pool!r} is not a pool of {service.name} ({service.pools})")
            members.clear()
            members.update((n.name, True) for n in self.config.nodes if n.pool == pool)
            self.switches[service.name] = pool
        elif args.add is not None:
            members.update((n.name, True) for n in self._group(args.add))
        else:
            assert args.restore_from is not None
            return self._lb_restore(step, service, args.restore_from)
        return self._lb_unit(step, service, [], self.scope)

    def _lb_unit(
        self, step: AnyStep, service: ServiceConfig, after: list[Op], scope: Scope
    ) -> Unit:
        """Rewrite the service's upstream file to the members followed so far."""
        lb, node = load_balancer(service), lb_node(self.config, service).name
        members = [(self.config.node(n), up) for n, up in self.upstreams[service.name].items()]
        content = ops.upstream_text(lb, service, members)
        key = ops.upstream_key(step.id)
        verify = min(step.timeout, LB_VERIFY) if isinstance(step, LbSetPoolStep) else None
        run = ops.lb_write_ops(node, lb, content, saves=key, verify=verify) + after
        undo = ops.lb_restore_ops(node, lb, _saved_upstream(step.id))
        if isinstance(step.undo, UndoCommand):
            undo = [self._command(node, step.undo.command, scope)]
        return Unit(node, run, undo)

    def _lb_restore(self, step: LbSetPoolStep, service: ServiceConfig, earlier: str) -> Unit:
        """Back to the upstream file as it was before step `earlier`, byte for byte."""
        lb, node = load_balancer(service), lb_node(self.config, service).name
        name, members = self.before[earlier]
        if name != service.name:
            raise ScopeError(f"step {earlier} rewrote the upstream of {name}, not {service.name}")
        self.upstreams[service.name] = dict(members)
        self.switches.pop(service.name, None)
        key = ops.upstream_key(step.id)
        save = ops.run_op(node, ["cat", lb.upstream_file], note="saved for undo", saves=key)
        run = ops.lb_restore_ops(node, lb, _saved_upstream(earlier))
        undo = ops.lb_restore_ops(node, lb, _saved_upstream(step.id))
        return Unit(node, [save, *run], undo)


def _saved_upstream(step_id: str) -> AtRun:
    return AtRun(f"upstream file saved before step {step_id}", ops.upstream_key(step_id))
