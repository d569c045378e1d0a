"""Translate the active detection rules into a Prometheus alerting rules file, followed by
the group of alerts that watch the daemons themselves (selfwatch.py).

Each rule becomes one alert whose expression holds for the same series and thresholds the
evaluator uses, aggregated by the rule's `group_by` (worst value first: `min` for `<`
rules, `max` for the others), with `for`, `severity` and `rule` labels, and annotations
rendered from the rule's title and summary templates plus the runbook command.

What has no exact Prometheus equivalent, and what is done instead:
- `resolve_after` hysteresis: `keep_firing_for` (Prometheus 2.42+), which keeps an alert
  firing that long after its expression stops returning it.
- Stale is not clear: the evaluator holds a group whose source stopped answering;
  Prometheus drops a stale series, so such an alert resolves (or keeps firing for
  `keep_firing_for`). The `target_down` alerts report the silent source.
- `inhibits`: inhibition belongs to Alertmanager; `inhibit_rules()` gives the matching
  `inhibit_rules`, written as a comment at the head of the file.
- `counter_increase`: the evaluator counts a series that appears on an already answering
  source from zero (an XID counter is created at its first XID). `increase()` cannot see
  that first value, so a series absent one window ago counts whole; after a Prometheus
  restart its old count may therefore fire once.
- `error_ratio` reads labels from the config (role, service, pool, node): they are
  attached with `label_replace` per configured endpoint, so the export reflects the config
  it was made from. A rule that matches no configured endpoint is not exported.
- `recovered` reads the config's recovery soak and error ratio per service: one term per
  service with a route, the completion probes' increase over the soak, and the route read
  `local` throughout it (`min_over_time`); the evaluator's soak starts when it first reads
  the route as local, Prometheus' covers whatever history the window holds.
- Template names with no label of the alert behind them are queried when Prometheus
  renders the alert, over the alert's own group (its labels matched with `and on(...)`):
  `count`/`total` count the group's series over the threshold / all of them, `gpus` lists
  their `gpu` labels, a series label the alert does not carry (a disk's `path`, an XID's
  `gpu`), `part`/`whole` and a `value_metric` threshold come from the group's worst series,
  `meaning` from NVIDIA's XID table, `expected`/`visible` from the node's series, `since`
  and `age` from `ALERTS_FOR_STATE` (when the alert became active; the evaluation time on
  its first evaluation). Nothing renders as `?` or as a metric name: a query that finds
  nothing (the condition already clear while `keep_firing_for` holds the alert) leaves
  the value out.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from reliability import catalog
from reliability.config import Config
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    GpuLostRule,
    ReachabilityRule,
    RecoveredRule,
    TargetDownRule,
    ThresholdRule,
)
from reliability.detect import selfwatch
from reliability.detect.builtin import active_rules
from reliability.detect.evaluator import endpoint_labels, recoveries
from reliability.detect.readings import Recovery
from reliability.detect.render import format_value, runbook_command
from reliability.detect.rules import (
    ENDPOINT_LABELS,
    TARGET_LABEL,
    AnyRule,
    series_labels,
    template_names,
)
from reliability.durations import format_duration

GROUP_NAME = "reliability"

EndpointLabels = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Export:
    """The rules file's text, and the rules left out with the reason."""

    text: str
    alerts: tuple[str, ...]
    skipped: dict[str, str]
    watching: tuple[str, ...] = ()  # the daemons' own alerts (selfwatch.py)


def alert_name(rule_name: str) -> str:
    """`gpu-xid-critical` -> `GpuXidCritical`: Prometheus' convention for alert names."""
    return "".join(part.capitalize() for part in rule_name.replace("_", "-").split("-"))


def prom_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration in its largest exact unit (`300.0` -> `5m`)."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _string(value: str) -> str:
    # A JSON string is a valid PromQL string literal: same escapes, double quotes.
    return json.dumps(value)


def _number(value: float) -> str:
    return repr(float(value))


def _selector(
    metric: str, *, match: Mapping[str, str] | None = None, equal: Mapping[str, str] | None = None
) -> str:
    """`metric{...}`: `match` values are regular expressions (anchored in both engines)."""
    matchers = [f"{k}=~{_string(v)}" for k, v in sorted((match or {}).items())]
    matchers += [f"{k}={_string(v)}" for k, v in sorted((equal or {}).items())]
    return f"{metric}{{{','.join(matchers)}}}" if matchers else metric


def _set_label(expr: str, label: str, value: str) -> str:
    """`expr` with `label` set to a constant (`$` doubled: label_replace expands it)."""
    replacement = _string(value.replace("$", "$$"))
    return f'label_replace({expr}, {_string(label)}, {replacement}, "", "")'


def _matching_endpoints(rule: ErrorRatioRule, endpoints: EndpointLabels) -> list[Mapping[str, str]]:
    return [
        labels
        for name, labels in sorted(endpoints.items())
        if (not rule.endpoint or name == rule.endpoint)
        and (not rule.role or labels["role"] == rule.role)
    ]


def _determined(group_by: Sequence[str], members: Sequence[Mapping[str, str]]) -> list[str]:
    """Endpoint labels with one value per group: kept on the alert without splitting it."""
    values: dict[str, dict[tuple[str, ...], set[str]]] = {}
    for labels in members:
        key = tuple(labels.get(g, "") for g in group_by)
        for label in ENDPOINT_LABELS:
            values.setdefault(label, {}).setdefault(key, set()).add(labels.get(label, ""))
    return [
        label
        for label in ENDPOINT_LABELS
        if label not in group_by and all(len(v) == 1 for v in values.get(label, {}).values())
    ]


def _matching_recoveries(rule: RecoveredRule, routed: Sequence[Recovery]) -> list[Recovery]:
    return [r for r in routed if not rule.endpoint or r.endpoint == rule.endpoint]


def alert_labels(
    rule: AnyRule, endpoints: EndpointLabels, routed: Sequence[Recovery] = ()
) -> tuple[str, ...]:
    """The labels each alert of the rule carries: its group, plus labels constant in it."""
    if not rule.group_by:
        return series_labels(rule)
    extra: list[str] = []
    if isinstance(rule, ErrorRatioRule):
        extra = _determined(rule.group_by, _matching_endpoints(rule, endpoints))
    elif isinstance(rule, RecoveredRule):
        extra = _determined(rule.group_by, [r.labels for r in _matching_recoveries(rule, routed)])
    elif isinstance(rule, TargetDownRule) and "collector" not in rule.group_by:
        extra = ["collector"]
    return (*rule.group_by, *extra)


def _threshold_value(rule: ThresholdRule) -> str:
    """The value compared: the metric, or its ratio to `per`. A `per` partner of zero is
    left out, as the evaluator skips it (x/0 is +Inf)."""
    metric = catalog.BY_NAME[rule.metric]
    value = _selector(rule.metric, match=rule.match)
    if rule.per:
        on = f"on({', '.join(metric.labels)})"
        value = f"{value} / {on} ({_selector(rule.per, match=rule.match)} > 0)"
    return value


def _threshold_expr(rule: ThresholdRule) -> str:
    value = _threshold_value(rule)
    if rule.value_metric:
        on = f"on({', '.join(catalog.BY_NAME[rule.metric].labels)})"
        return f"{value} {rule.op} {on} {_selector(rule.value_metric, match=rule.match)}"
    assert rule.value is not None  # the model requires one of value, value_metric
    return f"{value} {rule.op} {_number(rule.value)}"


def _counter_expr(rule: CounterIncreaseRule) -> str:
    """The increase over the window, or the whole count of a series newer than it."""
    series = _selector(rule.metric, match=rule.match)
    window, least = prom_duration(rule.window), _number(rule.min_increase)
    return (
        f"increase({series}[{window}]) >= {least} "
        f"or ({series} >= {least} unless {series} offset {window})"
    )


def _error_ratio_series(rule: ErrorRatioRule, endpoints: EndpointLabels) -> str | None:
    """The ratio of every endpoint the rule watches, with its config labels."""
    metric = catalog.API_OVERLOAD_RATIO if rule.overload_only else catalog.API_ERROR_RATIO
    terms = []
    for labels in _matching_endpoints(rule, endpoints):
        window = format_duration(rule.window)
        term = _selector(metric.name, equal={"endpoint": labels["endpoint"], "window": window})
        for label in ENDPOINT_LABELS:
            if label != "endpoint" and label in labels:
                term = _set_label(term, label, labels[label])
        terms.append(term)
    return f"({' or '.join(terms)})" if terms else None


def _recovered_series(rule: RecoveredRule, routed: Sequence[Recovery]) -> str | None:
    """Per service with a route, the failed share of the hosted API's completion probes
    over the service's soak, where enough probes ran and the route read local throughout."""
    terms = []
    for r in _matching_recoveries(rule, routed):
        window = prom_duration(r.soak)
        where = f'endpoint={_string(r.endpoint)},probe="completion"'
        probes = f"sum(increase({catalog.API_PROBES.name}{{{where}}}[{window}]))"
        failed = f'sum(increase({catalog.API_PROBES.name}{{{where},result!="ok"}}[{window}]))'
        local = _selector(
            catalog.SERVICE_ROUTE.name, equal={"service": r.service, "route": "local"}
        )
        term = (
            f"({failed} / {probes}) "
            f"and on() ({probes} >= {_number(rule.min_probes)}) "
            f"and on() (min_over_time({local}[{window}]) == 1)"
        )
        for label in ENDPOINT_LABELS:
            if label in r.labels:
                term = _set_label(term, label, r.labels[label])
        terms.append((term, r.max_error_ratio))
    if not terms:
        return None
    return " or ".join(f"({t})" for t, _ in terms)


def _recovered_expr(rule: RecoveredRule, routed: Sequence[Recovery]) -> str | None:
    terms = []
    for r in _matching_recoveries(rule, routed):
        one = _recovered_series(rule, [r])
        if one is not None:
            terms.append(f"({one} <= {_number(r.max_error_ratio)})")
    return f"({' or '.join(terms)})" if terms else None


def _target_up(rule: TargetDownRule) -> str:
    """For nodes `node_up` decides where present, as in the evaluator: a node whose output
    could not be parsed answered, so it is not down."""
    label = TARGET_LABEL[rule.collector]
    up = _selector(catalog.TARGET_UP.name, equal={"collector": rule.collector})
    up = f'label_replace({up}, {_string(label)}, "$1", "target", "(.*)")'
    if rule.collector == "node":
        node_up = _set_label(catalog.NODE_UP.name, "collector", "node")
        up = f"{node_up} or on(node) {up}"
    return f"({up})"


def _port(signal: str | None = None) -> str:
    """Per node: 1 while the probed port (any port: the best of them) answers, else 0."""
    equal = {"signal": signal} if signal else None
    return f"max by (node) ({_selector(catalog.NODE_LIVENESS_UP.name, equal=equal)})"


def _reachability(rule: ReachabilityRule) -> tuple[str, str]:
    """(series, holding) of a `reachability` rule, 1 where the node has the problem. As the
    evaluator judges, except that an SSH collection succeeding after the ports went
    silent does not count against `node` (Prometheus keeps no such order of events)."""
    collected = f"max by (node) ({catalog.NODE_UP.name})"
    unreachable = f"(({_port()} or on(node) {collected}) == bool 0)"
    if rule.lost == "node":
        series = unreachable
    elif rule.lost == "ssh":
        lost = f"(({_port('ssh')} == 0) or on(node) ({collected} == 0))"
        lost = f"({lost} unless on(node) ({unreachable} == 1))"
        series = f"(({lost} * 0 + 1) or on(node) (0 * {collected}))"
    else:
        lost = f"(({_port('serving')} == 0) and on(node) ({_port('ssh')} == 1))"
        series = f"(({lost} * 0 + 1) or on(node) (0 * {_port()}))"  # every probed node
    return series, f"{series} == 1"


def _series(
    rule: AnyRule, endpoints: EndpointLabels, routed: Sequence[Recovery] = ()
) -> tuple[str, str] | None:
    """(every series the rule reads, those holding its condition) as PromQL; None when
    nothing can match. `routed`: the services whose traffic can go back to a hosted API
    (`recovered`)."""
    if isinstance(rule, ThresholdRule):
        return _threshold_value(rule), _threshold_expr(rule)
    if isinstance(rule, CounterIncreaseRule):
        return _selector(rule.metric, match=rule.match), _counter_expr(rule)
    if isinstance(rule, ErrorRatioRule):
        ratios = _error_ratio_series(rule, endpoints)
        return None if ratios is None else (ratios, f"{ratios} > {_number(rule.above)}")
    if isinstance(rule, RecoveredRule):
        ratios = _recovered_series(rule, routed)
        holding = _recovered_expr(rule, routed)
        return None if ratios is None or holding is None else (ratios, holding)
    if isinstance(rule, TargetDownRule):
        up = _target_up(rule)
        return up, f"{up} == 0"
    if isinstance(rule, ReachabilityRule):
        return _reachability(rule)
    lost = catalog.NODE_GPUS_LOST.name
    return lost, f"{lost} > 0"


def _lowest_first(rule: AnyRule) -> bool:
    return (isinstance(rule, ThresholdRule) and rule.op in ("<", "<=")) or isinstance(
        rule, RecoveredRule
    )


def expression(
    rule: AnyRule, endpoints: EndpointLabels, routed: Sequence[Recovery] = ()
) -> str | None:
    """The PromQL returning one series per firing group; None when nothing can match."""
    series = _series(rule, endpoints, routed)
    if series is None:
        return None
    worst = "min" if _lowest_first(rule) else "max"
    return f"{worst} by ({', '.join(alert_labels(rule, endpoints, routed))}) ({series[1]})"


def _unit(rule: AnyRule) -> str:
    if isinstance(rule, ThresholdRule):
        return "ratio" if rule.per else catalog.BY_NAME[rule.metric].unit
    return "ratio" if isinstance(rule, ErrorRatioRule | RecoveredRule) else ""


_FORMAT_BY_UNIT = {
    "ratio": "{v} | humanizePercentage",
    "celsius": 'printf "%.0f" {v}',
    "bytes": "{v} | humanize",
    "watts": 'printf "%.0f" {v}',
    "seconds": "{v} | humanizeDuration",
}
_SUFFIX_BY_UNIT = {"celsius": "°C", "bytes": "B", "watts": " W"}


def _shown(value: str, unit: str) -> str:
    """Go template text showing the number `value` (a template expression) in `unit`."""
    pipeline = _FORMAT_BY_UNIT.get(unit, "{v}").format(v=value)
    return f"{{{{ {pipeline} }}}}{_SUFFIX_BY_UNIT.get(unit, '')}"


def _threshold_text(rule: AnyRule) -> str:
    unit = _unit(rule)
    if isinstance(rule, ThresholdRule):
        return format_value(rule.value or 0.0, unit)
    if isinstance(rule, ErrorRatioRule):
        return format_value(rule.above, unit)
    if isinstance(rule, CounterIncreaseRule):
        return format_value(rule.min_increase, unit)
    return format_value(1.0 if isinstance(rule, TargetDownRule | ReachabilityRule) else 0.0, unit)


@dataclass(frozen=True, slots=True)
class _Group:
    """PromQL narrowed to one alert's group when Prometheus renders it: `printf` formats
    whose arguments are the alert's labels."""

    labels: tuple[str, ...]

    @property
    def args(self) -> str:
        return "".join(f" $labels.{label}" for label in self.labels)

    def narrowed(self, expr: str) -> str:
        """A printf format: `expr`'s series carrying the alert's values of its labels (an
        empty value matches a series without the label, as Prometheus compares them)."""
        if not self.labels:
            return expr.replace("%", "%%")
        mine = "vector(1)"
        for i, label in enumerate(self.labels, 1):
            mine = f'label_replace({mine}, {_string(label)}, %[{i}]q, "", "")'
        return f"({expr.replace('%', '%%')}) and on({', '.join(self.labels)}) {mine}"

    def query(self, fmt: str, body: str, otherwise: str = "") -> str:
        """Go template text: `body` over the result of the query `fmt` (with `.` the
        result), or `otherwise` when it returns nothing."""
        rest = f"{{{{ else }}}}{otherwise}" if otherwise else ""
        return f"{{{{ with printf {_string(fmt)}{self.args} | query }}}}{body}{rest}{{{{ end }}}}"


def _meaning(label: str) -> str:
    """Go template text: NVIDIA's meaning of the XID in `label` (a template expression)."""
    chain = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq {label} "{code}" }}}}{xid.meaning}'
        for i, (code, xid) in enumerate(sorted(catalog.XIDS.items()))
    )
    return f"{chain}{{{{ else }}}}XID {{{{ {label} }}}}{{{{ end }}}}"


def _queried_values(
    rule: AnyRule,
    names: frozenset[str],
    labels: Sequence[str],
    endpoints: EndpointLabels,
    routed: Sequence[Recovery],
) -> dict[str, str]:
    """Go template text for the names no label of the alert holds, queried over its group."""
    series = _series(rule, endpoints, routed)
    assert series is not None  # alerting_rule exports only rules with an expression
    members, holding = series
    group = _Group(tuple(labels))
    pick = "bottomk" if _lowest_first(rule) else "topk"
    worst = f"{pick}(1, {group.narrowed(holding)})"  # a printf format, as `narrowed` gives
    out = {
        "count": group.query(f"count({group.narrowed(holding)})", "{{ . | first | value }}", "0"),
        "total": group.query(f"count({group.narrowed(members)})", "{{ . | first | value }}", "0"),
    }
    for label in sorted(set(series_labels(rule)) - set(labels)):
        out[label] = group.query(worst, f'{{{{ . | first | label "{label}" }}}}')
    if "xid" in labels:
        out["meaning"] = _meaning("$labels.xid")
    else:
        out["meaning"] = group.query(worst, _meaning('(. | first | label "xid")'))
    lost_gpu = f"{catalog.GPU_LOST.name} == 1"
    listed = group.narrowed(lost_gpu if isinstance(rule, GpuLostRule) else holding)
    out["gpus"] = group.query(
        listed,
        '{{ range $i, $s := sortByLabel "gpu" . }}{{ if $i }}, {{ end }}'
        "{{ $s.Labels.gpu }}{{ end }}",
        "not enumerated by the driver" if isinstance(rule, GpuLostRule) else "",
    )
    if isinstance(rule, ThresholdRule):
        metric = catalog.BY_NAME[rule.metric]
        on, unit = f"on({', '.join(metric.labels)})", metric.unit
        value = "(. | first | value)"
        partners = {"part": rule.metric, "whole": rule.per, "threshold": rule.value_metric}
        for name, partner in partners.items():
            if partner is not None:
                partner_fmt = _selector(partner, match=rule.match).replace("%", "%%")
                out[name] = group.query(f"{partner_fmt} and {on} {worst}", _shown(value, unit))
    active = _selector("ALERTS_FOR_STATE", equal={"alertname": alert_name(rule.name)})
    active = f"{group.narrowed(active)} or on() vector(time())"
    out["since"] = group.query(active, "{{ . | first | value | humanizeTimestamp }}")
    out["age"] = group.query(f"time() - ({active})", "{{ . | first | value | humanizeDuration }}")
    if isinstance(rule, ReachabilityRule):
        ports = f"{catalog.NODE_LIVENESS_UP.name}{{node=%q}}"
        out["signals"] = (
            f"{{{{ range $i, $s := printf {_string(ports)} $labels.node | query }}}}"
            "{{ if $i }}; {{ end }}{{ $s.Labels.signal }} port "
            "{{ if eq $s.Value 1.0 }}answers{{ else }}down{{ end }}{{ end }}"
        )
    if isinstance(rule, GpuLostRule):
        out["expected"] = _queried(catalog.NODE_GPUS_EXPECTED)
        out["visible"] = _queried(catalog.NODE_GPUS_VISIBLE)
    return {name: text for name, text in out.items() if name in names}


def _queried(metric: catalog.Metric) -> str:
    """A node's value of another metric, looked up when the alert is rendered."""
    return (
        f'{{{{ with printf "{metric.name}{{node=%q}}" $labels.node | query }}}}'
        "{{ . | first | value }}{{ end }}"
    )


def template_values(
    rule: AnyRule,
    labels: Sequence[str],
    endpoints: EndpointLabels,
    routed: Sequence[Recovery] = (),
) -> dict[str, str]:
    """Template name -> Go template text (or a constant) for every name a template of the
    rule may use (detect/rules.py `template_names`)."""
    names = template_names(rule)
    values = _queried_values(rule, names, labels, endpoints, routed)
    values |= {label: f"{{{{ $labels.{label} }}}}" for label in labels}
    values |= {
        "rule": rule.name,
        "severity": rule.severity,
        "value": _shown("$value", _unit(rule)),
        "for": format_duration(rule.for_) if rule.for_ else "0s",
    }
    if isinstance(rule, RecoveredRule):
        # Each service's own soak and error ratio: shown as one when the services agree.
        mine = _matching_recoveries(rule, routed)
        soaks = {format_duration(r.soak) for r in mine}
        ratios = {format_value(r.max_error_ratio, "ratio") for r in mine}
        values["window"] = soaks.pop() if len(soaks) == 1 else "its recovery soak"
        values["threshold"] = ratios.pop() if len(ratios) == 1 else "its recovery_error_ratio"
    values.setdefault("threshold", _threshold_text(rule))
    if isinstance(rule, ErrorRatioRule | CounterIncreaseRule):
        values["window"] = format_duration(rule.window)
    return values


def render_template(template: str, values: Mapping[str, str]) -> str:
    """A rule template with each `{name}` replaced by its Go template text (the config
    check allows only names `template_values` fills)."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append(values[field])
    return "".join(out)


def _runbook(rule: AnyRule, values: Mapping[str, str], labels: Sequence[str]) -> str | None:
    """The command to paste; rendered empty when a label it needs is missing, as the
    engine then offers no command rather than one with a blank parameter."""
    if rule.runbook is None:
        return None
    command = runbook_command(rule.runbook, values)
    if command is None:
        return None
    needed = sorted(
        {
            name
            for template in rule.runbook.params.values()
            for _, name, _, _ in string.Formatter().parse(template)
            if name in labels
        }
    )
    if not needed:
        return command
    condition = " ".join(f"$labels.{name}" for name in needed)
    return f"{{{{ if and {condition} }}}}{command}{{{{ end }}}}"


def alerting_rule(
    rule: AnyRule, endpoints: EndpointLabels, routed: Sequence[Recovery] = ()
) -> dict[str, object] | None:
    """One Prometheus alerting rule (a mapping in the rules file's key order), or None."""
    expr = expression(rule, endpoints, routed)
    if expr is None:
        return None
    labels = alert_labels(rule, endpoints, routed)
    values = template_values(rule, labels, endpoints, routed)
    where = ", ".join(f"{{{label}}}" for label in rule.group_by or labels)
    title = rule.title or f"{where}: {{rule}}"
    summary = rule.summary or "{rule}: {value} against {threshold}"
    out: dict[str, object] = {"alert": alert_name(rule.name), "expr": expr}
    if rule.for_:
        out["for"] = prom_duration(rule.for_)
    if rule.resolve_after:
        out["keep_firing_for"] = prom_duration(rule.resolve_after)
    out["labels"] = {"severity": rule.severity, "rule": rule.name}
    annotations = {
        "summary": render_template(title, values),
        "description": render_template(summary, values),
    }
    runbook = _runbook(rule, values, labels)
    if runbook is not None:
        annotations["runbook"] = runbook
    out["annotations"] = annotations
    return out


def inhibit_rules(rules: Sequence[AnyRule]) -> list[dict[str, object]]:
    """Alertmanager `inhibit_rules` doing what each rule's `inhibits` does in the engine:
    while it fires, alerts of the listed rules with the same group labels are muted."""
    return [
        {
            "source_matchers": [f"rule={_string(rule.name)}"],
            "target_matchers": [f"rule=~{_string('|'.join(rule.inhibits))}"],
            "equal": list(rule.group_by or series_labels(rule)),
        }
        for rule in rules
        if rule.inhibits
    ]


def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def export(config: Config) -> Export:
    """The rules file for the config's active rules, in their evaluation order."""
    rules = active_rules(config.rules)
    endpoints = endpoint_labels(config)
    routed = recoveries(config, endpoints)
    exported: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    for rule in rules:
        translated = alerting_rule(rule, endpoints, routed)
        if translated is None:
            skipped[rule.name] = (
                "no service has a route to a hosted endpoint"
                if isinstance(rule, RecoveredRule)
                else "no configured endpoint matches it"
            )
        else:
            exported.append(translated)
    header = "Generated by `reliability rules export`; edit the config, not this file.\n"
    for name, reason in skipped.items():
        header += f"Not exported: {name}: {reason}.\n"
    inhibit = inhibit_rules(rules)
    if inhibit:
        header += "\nFor alertmanager.yml: the rules' inhibitions.\n"
        header += yaml.safe_dump({"inhibit_rules": inhibit}, sort_keys=False, width=1 << 16)
    watching = selfwatch.rules(config)
    body = {
        "groups": [
            {"name": GROUP_NAME, "rules": exported},
            {"name": selfwatch.GROUP_NAME, "rules": watching},
        ]
    }
    text = _comment(header) + yaml.safe_dump(
        body, sort_keys=False, allow_unicode=True, width=1 << 16
    )
    return Export(
        text,
        tuple(str(r["alert"]) for r in exported),
        skipped,
        tuple(str(r["alert"]) for r in watching),
    )
