"""The evaluator: every cycle, the current samples in, firing and resolved transitions out.

Per rule and group (`group_by` labels: 40 hot GPUs on one node are one group), a group is
pending while its condition holds for less than `for`, then firing; a firing group
resolves only after the condition was seen clear for `resolve_after` (hysteresis).

Stale is not clear: when a series that held the condition is missing because its source
(the GPU or node collector of that node, the probe of that endpoint) did not answer this
cycle, or has not answered yet since a restart, the group is held as it is, pending or
firing, and its clear timer restarts. It resolves only on data that shows it clear, or
when its source answers without the series (a GPU gone from the driver's list). A down
source is an incident of its own (`node-down`, `gpu-source-down`).

Inhibition: while a group of rule R fires, groups of the rules in R's `inhibits` whose
labels agree with that group's labels raise nothing (node down: its GPU and probe
incidents). They keep their state, so one still true when R resolves fires then.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

from reliability import catalog
from reliability.collect.base import Sample
from reliability.collect.snapshot import ByMetric
from reliability.config import Config
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    ReachabilityRule,
    RecoveredRule,
    Severity,
    TargetDownRule,
    ThresholdRule,
)
from reliability.detect import readings
from reliability.detect.builtin import active_rules
from reliability.detect.counters import CounterWindow, SoakWindows
from reliability.detect.readings import Reading, Recovery, Samples, Source
from reliability.detect.render import (
    RunbookRequest,
    format_time,
    format_value,
    render,
    runbook_request,
)
from reliability.detect.rules import AnyRule
from reliability.durations import format_duration

FINGERPRINT_PREFIX = "rule:"
_MAX_FINGERPRINT = 255  # the incidents table's column


@dataclass(frozen=True, slots=True)
class Transition:
    """A group started firing or resolved: what the incident service and Slack need.

    `labels`: the group's labels plus those its series share (node, gpu, endpoint ...).
    `value`/`threshold` of the worst series (`*_text` with units: "91°C"); `since`: when
    the condition started (for a group restored after a restart, when it was first read
    again); `runbook`: the command to paste, or None.
    """

    kind: Literal["firing", "resolved"]
    fingerprint: str
    rule: str
    severity: Severity
    title: str
    summary: str
    labels: dict[str, str]
    value: float
    threshold: float
    value_text: str
    threshold_text: str
    since: float
    at: float
    runbook: str | None  # the command an operator pastes
    runbook_request: RunbookRequest | None  # the same, for the daemon to run when `auto`


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """A group that started pending: what a member taking its target over needs to resume
    its `for` (`since`, Unix time on this host's clock)."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    since: float


@dataclass(slots=True)
class _View:
    """A group as last read: its worst series, how many of its series hold, and what they
    share."""

    worst: Reading
    count: int
    total: int
    labels: dict[str, str]
    gpus: str


@dataclass(slots=True)
class _Group:
    fingerprint: str
    labels: dict[str, str]
    since: float
    view: _View
    bad_view: _View | None = None  # the last view in which the condition held
    firing: bool = False
    announced: bool = False  # a firing transition went out and no resolved one since
    clear_since: float | None = None
    bad: Mapping[tuple[str, ...], Source | None] | None = None  # series that held, last read


@dataclass(slots=True)
class _Rule:
    rule: AnyRule
    read: Callable[[Samples], list[Reading]]
    unit: str
    groups: dict[tuple[str, ...], _Group]


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """`rule:NAME{label="value",...}`: stable across restarts, readable in the database;
    hashed when it would not fit the incidents table's column."""
    body = ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in labels.items())
    text = f"{FINGERPRINT_PREFIX}{rule}{{{body}}}"
    if len(text) <= _MAX_FINGERPRINT:
        return text
    return f"{FINGERPRINT_PREFIX}{rule}#{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def endpoint_labels(config: Config) -> dict[str, dict[str, str]]:
    """Each endpoint's labels: role, service, the pool it serves (its node's pool when its
    host is a node, else the service's active pool), the service's other pool, the node."""
    by_address = {n.address: n for n in config.nodes}
    services = {s.name: s for s in config.services}
    out: dict[str, dict[str, str]] = {}
    for e in config.endpoints:
        labels = {"endpoint": e.name, "role": e.role}
        node = by_address.get(urlsplit(e.url).hostname or "")
        service = services.get(e.service or "")
        pool = None
        if e.role == "local":  # a hosted API serves no pool of ours
            pool = node.pool if node and node.pool else (service.active_pool if service else None)
        if service:
            labels["service"] = service.name
        if pool:
            labels["pool"] = pool
        if service and pool:
            other = next((p for p in service.pools if p != pool), None)
            if other:
                labels["standby_pool"] = other
        if node:
            labels["node"] = node.name
        out[e.name] = labels
    return out


def recoveries(config: Config, endpoints: Mapping[str, dict[str, str]]) -> list[Recovery]:
    """Each service with a route and the one hosted API it falls back from (config check
    makes sure there is one), as `upstream-recovered` reads them."""
    out = []
    for s in config.services:
        hosted = config.hosted_endpoints(s.name)
        if s.load_balancer is None or s.load_balancer.route is None or len(hosted) != 1:
            continue
        labels = {**endpoints[hosted[0].name], "service": s.name}
        out.append(
            Recovery(hosted[0].name, s.name, s.recovery_soak, s.recovery_error_ratio, labels)
        )
    return out


def _unit(rule: AnyRule) -> str:
    if isinstance(rule, ThresholdRule):
        return "ratio" if rule.per else catalog.BY_NAME[rule.metric].unit
    return "ratio" if isinstance(rule, ErrorRatioRule | RecoveredRule) else ""


def _worst(rule: AnyRule, candidates: list[Reading]) -> Reading:
    if isinstance(rule, ThresholdRule) and rule.op in ("<", "<="):
        return min(candidates, key=lambda r: r.value)
    if isinstance(rule, TargetDownRule | ReachabilityRule):
        return candidates[0]
    return max(candidates, key=lambda r: r.value)


def _shared_labels(series: list[Reading]) -> dict[str, str]:
    first, *rest = series
    return {k: v for k, v in first.labels.items() if all(r.labels.get(k) == v for r in rest)}


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


class Evaluator:
    """Evaluates the config's active rules (built-ins and custom) over each cycle's samples.

    Keeps per-group state and counter histories between calls; not thread-safe: one
    caller, once per cycle. `now` is Unix time, passed in so tests drive the clock.
    """

    def __init__(self, config: Config) -> None:
        self._endpoints = endpoint_labels(config)
        self._recoveries = recoveries(config, self._endpoints)
        self._seen: set[Source] = set()  # sources that have answered at least once
        self._restored: set[str] = set()
        # Pending since when (Unix time), by fingerprint: groups another daemon started,
        # resumed at their first reading here (dropped if that reading is clear).
        self._resumable: dict[str, float] = {}
        # Groups that started pending (or stopped: None) since `pending_changes()`.
        self._pending: dict[str, PendingGroup | None] = {}
        self._rules = [self._compile(rule) for rule in active_rules(config.rules)]

    @property
    def rules(self) -> list[AnyRule]:
        return [c.rule for c in self._rules]

    def _compile(self, rule: AnyRule) -> _Rule:
        read: Callable[[Samples], list[Reading]]
        if isinstance(rule, ThresholdRule):
            read = partial(readings.threshold, rule)
        elif isinstance(rule, CounterIncreaseRule):
            history = CounterWindow(rule.window)
            read = partial(readings.counter_increase, rule, history=history, seen=self._seen)
        elif isinstance(rule, ErrorRatioRule):
            read = partial(readings.error_ratio, rule, endpoints=self._endpoints)
        elif isinstance(rule, RecoveredRule):
            windows = SoakWindows()
            read = partial(readings.recovered, rule, recoveries=self._recoveries, windows=windows)
        elif isinstance(rule, TargetDownRule):
            read = partial(readings.target_down, rule)
        elif isinstance(rule, ReachabilityRule):
            read = partial(readings.reachable, rule)
        else:
            read = partial(readings.gpu_lost, rule)
        return _Rule(rule, read, _unit(rule), {})

    def restore(
        self, fingerprints: Iterable[str], pending: Mapping[str, float] | None = None
    ) -> None:
        """Treat these rule incidents, open before a restart (or opened by another daemon of
        the cluster before this one took their targets over), as firing and announced: they
        resolve when their condition is read clear, and do not fire a second time.
        `fingerprints` is every open one: earlier restored ones not among them are dropped.

        `pending`: groups pending elsewhere (another daemon, or this one before a restart)
        and since when (Unix time): a group read bad for the first time here keeps that
        start, so its `for` runs out when it would have there; read clear, it is dropped.

        A group is taken over when its series are first read again; until then (no data
        yet) it stays open. Fingerprints of other sources (Alertmanager, manual) are ignored.
        """
        wanted = {fp for fp in fingerprints if fp.startswith(FINGERPRINT_PREFIX)}
        held = set()
        for c in self._rules:
            for group in c.groups.values():
                held.add(group.fingerprint)
                if group.fingerprint in wanted:
                    group.firing = group.announced = True
                    wanted.discard(group.fingerprint)
        # What is not open now is not restored (resolved meanwhile by another daemon).
        self._restored = wanted
        self._resumable = {fp: t for fp, t in (pending or {}).items() if fp not in held}

    @property
    def longest_for(self) -> float:
        """The longest `for` of the active rules (0 with none)."""
        return max((c.rule.for_ for c in self._rules), default=0.0)

    def pending_changes(self) -> dict[str, PendingGroup | None]:
        """Groups that started pending since the last call, and (None) those that fired,
        cleared, or were found clear when resumed: what the shared database must learn so
        that another daemon can resume them. Groups with no `for` never pend."""
        changes, self._pending = self._pending, {}
        return changes

    def release(self, keep: Callable[[Mapping[str, str]], bool]) -> int:
        """Forget the groups whose labels `keep` refuses (targets now watched by another
        daemon of the cluster): they neither resolve nor fire here; their open incidents
        stay open for the new owner, which takes them over with `restore`. How many went."""
        dropped = 0
        for c in self._rules:
            for key, group in list(c.groups.items()):
                if not keep({**group.view.labels, **group.labels}):
                    del c.groups[key]
                    dropped += 1
        return dropped

    def idle(self) -> bool:
        """Nothing pending, firing or restored: the same samples again cannot change anything
        (the daemon then skips evaluating an unchanged snapshot)."""
        return not self._restored and not any(c.groups for c in self._rules)

    def next_due(self) -> float | None:
        """When the first pending group's `for` runs out (Unix time), None with none
        pending: the loop evaluates then instead of at its next tick."""
        due = [
            g.since + c.rule.for_
            for c in self._rules
            for g in c.groups.values()
            if not g.firing and g.clear_since is None
        ]
        return min(due, default=None)

    def evaluate(self, samples: Iterable[Sample] | ByMetric, now: float) -> list[Transition]:
        """Read every rule over this cycle's samples (all of them: what the snapshot holds,
        as a list or its `by_metric()`) and return the groups that started firing and those
        that resolved."""
        data = Samples(samples, now)
        ended: list[tuple[_Rule, _Group]] = []
        for c in self._rules:
            ended.extend((c, g) for g in self._step(c, c.read(data), data, now))
        self._seen.update(src for src, up in data.up.items() if up)
        inhibited = self._inhibitions()
        out = []
        for c in self._rules:
            for group in c.groups.values():
                # Held back while inhibited, a group is announced only if its condition
                # still holds: one already clearing when the node came back is not news.
                due = group.firing and not group.announced and group.clear_since is None
                if due and not self._suppressed(c.rule.name, group, inhibited):
                    group.announced = True
                    out.append(self._transition("firing", c, group, now))
        out.extend(self._transition("resolved", c, g, now) for c, g in ended if g.announced)
        return out

    def _step(self, c: _Rule, series: list[Reading], data: Samples, now: float) -> list[_Group]:
        """Advance every group of one rule by this cycle's readings; return those removed."""
        rule = c.rule
        by_group: dict[tuple[str, ...], list[Reading]] = {}
        for r in series:
            key = tuple(r.labels.get(k, "") for k in rule.group_by) if rule.group_by else r.key
            by_group.setdefault(key, []).append(r)
        for key, members in by_group.items():
            bad = [r for r in members if r.bad]
            group = c.groups.get(key)
            if group is None and not bad and not self._restored and not self._resumable:
                continue  # the common case: all clear, nothing open
            view = self._view(rule, members, bad)
            if group is None:
                group = self._new_group(rule, key, members[0].labels, view, now)
                if group is None:
                    continue
                c.groups[key] = group
            group.view = view
            if bad:
                group.bad_view = group.view
                group.bad = {r.key: r.source for r in bad}
        removed = []
        for key, group in list(c.groups.items()):
            members = by_group.get(key, [])
            was_firing = group.firing
            over = self._advance(rule, group, members, data, now)
            if rule.for_ and not was_firing and (over or group.firing):
                self._pending[group.fingerprint] = None  # fired or cleared
            if over:
                del c.groups[key]
                removed.append(group)
        return removed

    def _new_group(
        self, rule: AnyRule, key: tuple[str, ...], labels: dict[str, str], view: _View, now: float
    ) -> _Group | None:
        """A group seen for the first time: new when its condition holds, or taken over
        from a restored incident (read clear, it then resolves after `resolve_after`).
        `labels`: one member's, the group's own when the rule has no `group_by`."""
        if rule.group_by:
            labels = dict(zip(rule.group_by, key, strict=True))
        fp = fingerprint(rule.name, labels)
        resumed = self._resumable.pop(fp, None)
        if fp in self._restored:
            self._restored.discard(fp)
            if resumed is not None:
                self._pending[fp] = None
            return _Group(fp, dict(labels), now, view, firing=True, announced=True)
        if not view.count:
            if resumed is not None:
                self._pending[fp] = None  # its target recovered meanwhile
            return None
        if resumed is not None:
            return _Group(fp, dict(labels), min(resumed, now), view)
        if rule.for_:
            self._pending[fp] = PendingGroup(fp, rule.name, dict(labels), now)
        return _Group(fp, dict(labels), now, view)

    @staticmethod
    def _view(rule: AnyRule, members: list[Reading], bad: list[Reading]) -> _View:
        focus = bad or members
        gpus = sorted({r.labels["gpu"] for r in focus if "gpu" in r.labels}, key=_gpu_order)
        return _View(
            _worst(rule, focus), len(bad), len(members), _shared_labels(focus), ", ".join(gpus)
        )

    @staticmethod
    def _advance(
        rule: AnyRule, group: _Group, members: list[Reading], data: Samples, now: float
    ) -> bool:
        """One step of the group's state; True when it is over (cleared, or resolved)."""
        if any(r.bad for r in members):
            group.clear_since = None
            if not group.firing and now - group.since >= rule.for_:
                group.firing = True
            return False
        present = {r.key for r in members}
        missing = [src for k, src in (group.bad or {}).items() if k not in present]
        if any(src is not None and not data.up.get(src, False) for src in missing):
            group.clear_since = None  # stale: hold, and count clear time only on real data
            return False
        if not group.firing:
            return True
        if group.clear_since is None:
            group.clear_since = now
        return now - group.clear_since >= rule.resolve_after

    def _inhibitions(self) -> dict[str, list[dict[str, str]]]:
        """Rule name -> labels of the firing groups that inhibit it."""
        out: dict[str, list[dict[str, str]]] = {}
        for c in self._rules:
            firing = [g.labels for g in c.groups.values() if g.firing]
            if firing:
                for name in c.rule.inhibits:
                    out.setdefault(name, []).extend(firing)
        return out

    @staticmethod
    def _suppressed(
        name: str, group: _Group, inhibited: Mapping[str, list[dict[str, str]]]
    ) -> bool:
        labels = {**group.view.labels, **group.labels}
        return any(all(labels.get(k) == v for k, v in by.items()) for by in inhibited.get(name, ()))

    def _variables(self, c: _Rule, group: _Group, view: _View, now: float) -> dict[str, str]:
        rule, worst = c.rule, view.worst
        variables = {
            **worst.labels,
            "gpus": view.gpus,
            **(worst.extra or {}),
            "rule": rule.name,
            "severity": rule.severity,
            "value": format_value(worst.value, c.unit),
            "threshold": format_value(worst.threshold, c.unit),
            "since": format_time(group.since),
            "age": format_duration(now - group.since) if now > group.since else "0s",
            "for": format_duration(rule.for_) if rule.for_ else "0s",
            "count": str(view.count),
            "total": str(view.total),
        }
        if "xid" in worst.labels and worst.labels["xid"].isdigit():
            variables["meaning"] = catalog.xid_info(int(worst.labels["xid"])).meaning
        if isinstance(rule, ErrorRatioRule | CounterIncreaseRule):
            variables["window"] = format_duration(rule.window)
        return variables

    def _transition(
        self, kind: Literal["firing", "resolved"], c: _Rule, group: _Group, now: float
    ) -> Transition:
        """Title and summary describe the condition as it last held; the value is current."""
        rule, latest = c.rule, group.view
        variables = self._variables(c, group, group.bad_view or latest, now)
        where = ", ".join(v for v in group.labels.values() if v) or rule.name
        title = render(rule.title, variables) if rule.title else f"{where}: {rule.name}"
        default_summary = f"{rule.name}: {variables['value']} against {variables['threshold']}"
        request = runbook_request(rule.runbook, variables) if rule.runbook else None
        return Transition(
            kind=kind,
            fingerprint=group.fingerprint,
            rule=rule.name,
            severity=rule.severity,
            title=title,
            summary=render(rule.summary, variables) if rule.summary else default_summary,
            labels={**latest.labels, **group.labels},
            value=latest.worst.value,
            threshold=latest.worst.threshold,
            value_text=format_value(latest.worst.value, c.unit),
            threshold_text=format_value(latest.worst.threshold, c.unit),
            since=group.since,
            at=now,
            runbook=request.command if request else None,
            runbook_request=request,
        )


__all__ = [
    "Evaluator",
    "PendingGroup",
    "Transition",
    "endpoint_labels",
    "fingerprint",
    "recoveries",
]
