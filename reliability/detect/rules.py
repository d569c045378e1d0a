"""What each rule type reads: the labels of its series, the collector behind them and the
names its templates may use.

The config check and the engine share this, so a `group_by` or a template naming a label
the rule never has is an error at load with its line, not a blank in a Slack message.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Iterator

from reliability import catalog
from reliability.catalog import Metric
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    GpuLostRule,
    ReachabilityRule,
    RecoveredRule,
    TargetDownRule,
    ThresholdRule,
)

AnyRule = (
    ThresholdRule
    | ErrorRatioRule
    | RecoveredRule
    | TargetDownRule
    | ReachabilityRule
    | CounterIncreaseRule
    | GpuLostRule
)
Loc = tuple[str | int, ...]

# The label that names a collector's target in the series it publishes.
TARGET_LABEL = {"gpu": "node", "node": "node", "liveness": "node", "api": "endpoint"}
# An error-ratio series is an endpoint plus where the config places it; `node` only when
# the endpoint's host is a configured node, so a down node can inhibit its probe incidents.
ENDPOINT_LABELS = ("endpoint", "role", "service", "pool", "standby_pool", "node")
COMMON_VARS = frozenset(
    {"rule", "severity", "value", "threshold", "since", "age", "for", "count", "total"}
)


def collector_of(metric: Metric) -> str | None:
    """The collector publishing `metric`, from its name's family. None for the meta series
    (`target_*`), which the snapshot keeps for every configured target."""
    short = metric.name.removeprefix(catalog.PREFIX)
    if short.startswith("node_liveness_"):
        return "liveness"
    if short.startswith(("gpu_", "node_gpus_")):
        return "gpu"
    if short.startswith("node_"):
        return "node"
    if short.startswith("api_"):
        return "api"
    return None


def rule_collector(rule: AnyRule) -> str | None:
    """The collector whose data the rule reads (None: the meta series)."""
    if isinstance(rule, ThresholdRule | CounterIncreaseRule):
        return collector_of(catalog.BY_NAME[rule.metric])
    if isinstance(rule, ErrorRatioRule | RecoveredRule):
        return "api"
    if isinstance(rule, TargetDownRule):
        return rule.collector
    if isinstance(rule, ReachabilityRule):
        return "liveness"
    return "gpu"


def series_labels(rule: AnyRule) -> tuple[str, ...]:
    """The labels every series the rule evaluates can carry."""
    if isinstance(rule, ThresholdRule | CounterIncreaseRule):
        return catalog.BY_NAME[rule.metric].labels
    if isinstance(rule, ErrorRatioRule | RecoveredRule):
        return ENDPOINT_LABELS
    if isinstance(rule, TargetDownRule):
        return ("collector", TARGET_LABEL[rule.collector])
    return ("node",)  # gpu_lost, reachability


def template_names(rule: AnyRule) -> frozenset[str]:
    """Every `{name}` the rule's title, summary and runbook parameters may use."""
    labels = series_labels(rule)
    names = set(COMMON_VARS) | set(labels)
    if "gpu" in labels or isinstance(rule, GpuLostRule):
        names.add("gpus")
    if "xid" in labels:
        names.add("meaning")
    if isinstance(rule, ThresholdRule) and rule.per:
        names |= {"part", "whole"}
    if isinstance(rule, GpuLostRule):
        names |= {"expected", "visible"}
    if isinstance(rule, ReachabilityRule):
        names.add("signals")
    if isinstance(rule, CounterIncreaseRule | ErrorRatioRule | RecoveredRule):
        names.add("window")
    return frozenset(names)


def placeholders(template: str) -> list[str]:
    """The `{names}` in a template; ValueError when its braces do not pair up."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def _check_template(loc: Loc, template: str, names: frozenset[str]) -> Iterator[tuple[Loc, str]]:
    try:
        fields = placeholders(template)
    except ValueError as exc:
        yield loc, f"bad template: {exc} (write {{{{ and }}}} for literal braces)"
        return
    for field in fields:
        if field not in names:
            yield loc, f"unknown placeholder {{{field}}}; use one of: {', '.join(sorted(names))}"


def _check_metric(loc: Loc, name: str) -> Iterator[tuple[Loc, str]]:
    if name not in catalog.BY_NAME:
        yield loc, f"{name!r} is not a metric reliability exports (see reliability/catalog.py)"


def _check_metrics(rule: ThresholdRule | CounterIncreaseRule) -> Iterator[tuple[Loc, str]]:
    """The metric, and the metrics it is compared with or divided by, exist and line up."""
    metric = catalog.BY_NAME[rule.metric]
    if isinstance(rule, CounterIncreaseRule) and metric.kind != "counter":
        yield ("metric",), f"{metric.name} is a {metric.kind}; counter_increase needs a counter"
    if isinstance(rule, ThresholdRule):
        if metric.kind == "histogram":
            yield ("metric",), f"{metric.name} is a histogram; a threshold needs a gauge or counter"
        for field in ("value_metric", "per"):
            other = getattr(rule, field)
            if other is None:
                continue
            problems = list(_check_metric((field,), other))
            yield from problems
            if not problems and catalog.BY_NAME[other].labels != metric.labels:
                yield (
                    (field,),
                    f"{other} has labels ({', '.join(catalog.BY_NAME[other].labels)}), "
                    f"not those of {metric.name} ({', '.join(metric.labels)})",
                )
    for label in rule.match:
        if label not in metric.labels:
            yield (
                ("match",),
                f"{metric.name} has no label {label!r} (labels: {', '.join(metric.labels)})",
            )


def check_rule(
    rule: AnyRule, *, rule_names: Collection[str], endpoints: Collection[str]
) -> Iterator[tuple[Loc, str]]:
    """Problems of one configured rule, each with its field's path inside the rule."""
    if isinstance(rule, ThresholdRule | CounterIncreaseRule):
        problems = list(_check_metric(("metric",), rule.metric))
        if problems:
            yield from problems
            return
        yield from _check_metrics(rule)
    labels = series_labels(rule)
    for label in rule.group_by:
        if label not in labels:
            yield ("group_by",), f"this rule's series have no label {label!r} ({', '.join(labels)})"
    names = template_names(rule)
    for field in ("title", "summary"):
        text = getattr(rule, field)
        if text is not None:
            yield from _check_template((field,), text, names)
    if rule.runbook is not None:
        for key, value in rule.runbook.params.items():
            yield from _check_template(("runbook", "params", key), value, names)
    if isinstance(rule, ErrorRatioRule | RecoveredRule) and rule.endpoint not in (None, *endpoints):
        yield ("endpoint",), f"no endpoint is named {rule.endpoint!r}"
    for j, name in enumerate(rule.inhibits):
        if name not in rule_names:
            yield ("inhibits", j), f"no rule is named {name!r}"
