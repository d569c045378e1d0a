"""Each rule type's reading of one cycle's samples: per series, its value, the threshold
it is held against, whether the condition holds, and where the data came from.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from reliability import catalog
from reliability.collect.base import HistogramValue, Sample
from reliability.collect.snapshot import ByMetric
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    GpuLostRule,
    ReachabilityRule,
    RecoveredRule,
    TargetDownRule,
    ThresholdRule,
)
from reliability.detect import reachability
from reliability.detect.counters import CounterWindow, SoakWindows
from reliability.detect.render import format_value
from reliability.detect.rules import TARGET_LABEL, rule_collector
from reliability.durations import format_duration

Source = tuple[str, str]  # (collector, target): what must answer for a series to exist

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(slots=True)
class Reading:
    """One series in one cycle. `extra` holds rule-specific template values."""

    key: tuple[str, ...]
    labels: dict[str, str]
    value: float
    threshold: float
    bad: bool
    source: Source | None
    extra: Mapping[str, str] | None = None


class Samples:
    """One cycle's samples indexed by metric name, which targets answered, and when.
    `samples`: a list, or the snapshot's `by_metric()` (only the metrics the rules read
    are gathered)."""

    def __init__(self, samples: Iterable[Sample] | ByMetric, now: float) -> None:
        self.now = now
        self.by_metric = samples if isinstance(samples, ByMetric) else ByMetric.of(samples)
        self.up: dict[Source, bool] = {
            (s.labels[0], s.labels[1]): s.value == 1.0 for s in self.of(catalog.TARGET_UP.name)
        }

    def of(self, metric: str) -> list[Sample]:
        return self.by_metric.get(metric, [])

    @cached_property
    def node_signals(self) -> dict[str, reachability.NodeSignals]:
        """Every node's signals, read once for the reachability rules (three built-ins)."""
        return reachability.node_signals(self.by_metric)

    def values(self, metric: str) -> dict[tuple[str, ...], float]:
        return {
            s.labels: s.value for s in self.of(metric) if not isinstance(s.value, HistogramValue)
        }


def _matcher(
    labels: tuple[str, ...], match: Mapping[str, str]
) -> Callable[[tuple[str, ...]], bool]:
    """Label values -> does the series match every `label: regex` (anchored, as in PromQL)."""
    checks = [(labels.index(k), re.compile(v)) for k, v in match.items()]
    return lambda values: all(p.fullmatch(values[i]) for i, p in checks)


def _source_fn(
    collector: str | None, labels: tuple[str, ...]
) -> Callable[[tuple[str, ...]], Source | None]:
    """Label values -> the (collector, target) whose answer the series depends on."""
    if collector is None:
        return lambda values: None
    index = labels.index(TARGET_LABEL[collector])
    return lambda values: (collector, values[index])


def threshold(rule: ThresholdRule, samples: Samples) -> list[Reading]:
    """A series without its `per` or `value_metric` partner is not read: half a ratio
    compared with a threshold would raise a false alarm."""
    metric = catalog.BY_NAME[rule.metric]
    matches = _matcher(metric.labels, rule.match)
    source = _source_fn(rule_collector(rule), metric.labels)
    per = samples.values(rule.per) if rule.per else None
    reference = samples.values(rule.value_metric) if rule.value_metric else None
    compare = OPS[rule.op]
    out = []
    for s in samples.of(metric.name):
        if isinstance(s.value, HistogramValue) or not matches(s.labels):
            continue
        value, extra = s.value, None
        if per is not None:
            whole = per.get(s.labels)
            if not whole:
                continue
            value = s.value / whole
            extra = {
                "part": format_value(s.value, metric.unit),
                "whole": format_value(whole, metric.unit),
            }
        limit = rule.value if reference is None else reference.get(s.labels)
        if limit is None:
            continue
        labels = dict(zip(metric.labels, s.labels, strict=True))
        out.append(
            Reading(s.labels, labels, value, limit, compare(value, limit), source(s.labels), extra)
        )
    return out


def counter_increase(
    rule: CounterIncreaseRule, samples: Samples, *, history: CounterWindow, seen: set[Source]
) -> list[Reading]:
    """`seen`: sources that answered in an earlier cycle. A series that appears on one of
    them is new events (an XID counter is created at its first XID); a series present when
    its source first answers is only the count so far."""
    metric = catalog.BY_NAME[rule.metric]
    matches = _matcher(metric.labels, rule.match)
    source = _source_fn(rule_collector(rule), metric.labels)
    out = []
    for s in samples.of(metric.name):
        if isinstance(s.value, HistogramValue) or not matches(s.labels):
            continue
        src = source(s.labels)
        rise = history.observe(s.labels, samples.now, s.value, from_zero=src in seen)
        labels = dict(zip(metric.labels, s.labels, strict=True))
        out.append(
            Reading(s.labels, labels, rise, rule.min_increase, rise >= rule.min_increase, src)
        )
    return out


def error_ratio(
    rule: ErrorRatioRule, samples: Samples, *, endpoints: Mapping[str, dict[str, str]]
) -> list[Reading]:
    """`endpoints`: name -> its labels from the config (role, service, pool, node ...)."""
    metric = catalog.API_OVERLOAD_RATIO if rule.overload_only else catalog.API_ERROR_RATIO
    out, wanted = [], format_duration(rule.window)
    for s in samples.of(metric.name):
        name, window = s.labels
        labels = endpoints.get(name)
        if window != wanted or labels is None or isinstance(s.value, HistogramValue):
            continue
        if (rule.endpoint and name != rule.endpoint) or (rule.role and labels["role"] != rule.role):
            continue
        out.append(
            Reading((name,), dict(labels), s.value, rule.above, s.value > rule.above, ("api", name))
        )
    return out


@dataclass(frozen=True, slots=True)
class Recovery:
    """A service whose traffic can move back to its hosted API (`endpoint`), with its
    soak and the share of failed completion probes the soak allows; `labels` those of
    the endpoint, with the service's name."""

    endpoint: str
    service: str
    soak: float
    max_error_ratio: float
    labels: Mapping[str, str]


def _completions(samples: Samples) -> dict[str, tuple[float, float]]:
    """Endpoint -> (completion probes, failed ones) since the collector started."""
    out: dict[str, tuple[float, float]] = {}
    for s in samples.of(catalog.API_PROBES.name):
        endpoint, probe, result = s.labels
        if probe != "completion" or isinstance(s.value, HistogramValue):
            continue
        probes, failed = out.get(endpoint, (0.0, 0.0))
        out[endpoint] = (probes + s.value, failed + (0.0 if result == "ok" else s.value))
    return out


def recovered(
    rule: RecoveredRule,
    samples: Samples,
    *,
    recoveries: Sequence[Recovery],
    windows: SoakWindows,
) -> list[Reading]:
    """The soak counts only while the route file reads `local`; any other reading starts
    it again. No route or probe reading yet: no series (held as it was)."""
    if not recoveries:
        return []  # no service falls back from a hosted API: nothing to read
    route = samples.values(catalog.SERVICE_ROUTE.name)
    completions = _completions(samples)
    out = []
    for r in recoveries:
        local, counts = route.get((r.service, "local")), completions.get(r.endpoint)
        if (rule.endpoint and r.endpoint != rule.endpoint) or local is None or counts is None:
            continue
        key = (r.endpoint, r.service)
        ratio, bad = 0.0, False
        if local == 1.0:
            soaked, probes, failed = windows.observe(key, samples.now, *counts, r.soak)
            ratio = failed / probes if probes else 1.0
            bad = soaked and probes >= rule.min_probes and ratio <= r.max_error_ratio
        else:
            windows.reset(key)
        extra = {"window": format_duration(r.soak)}
        source = ("route", r.service)
        out.append(Reading(key, dict(r.labels), ratio, r.max_error_ratio, bad, source, extra))
    return out


def target_down(rule: TargetDownRule, samples: Samples) -> list[Reading]:
    """For nodes, `node_up` decides when present: output the node collector cannot parse
    fails the collection but comes from a node that answered, so it is not down."""
    node_up = samples.values(catalog.NODE_UP.name) if rule.collector == "node" else {}
    label = TARGET_LABEL[rule.collector]
    out = []
    for s in samples.of(catalog.TARGET_UP.name):
        collector, target = s.labels
        if collector != rule.collector or isinstance(s.value, HistogramValue):
            continue
        up = node_up.get((target,), s.value)
        labels = {"collector": collector, label: target}
        out.append(Reading((target,), labels, up, 1.0, up == 0.0, None))
    return out


def reachable(rule: ReachabilityRule, samples: Samples) -> list[Reading]:
    """Per node, whether `rule.lost` is among its problems (detect/reachability.py). The
    data comes from the liveness probe where it probes the node, else the SSH collector."""
    out = []
    for node, signals in samples.node_signals.items():
        bad = rule.lost in reachability.judge(signals)
        source = ("liveness" if signals.ports else "node", node)
        extra = _Described(signals)
        out.append(Reading((node,), {"node": node}, float(bad), 1.0, bad, source, extra))
    return out


class _Described(Mapping[str, str]):
    """The `signals` template value of a node, described only if a title or summary reads
    it: most readings are never rendered, and describing every node each evaluation cost
    more than judging it."""

    def __init__(self, signals: reachability.NodeSignals) -> None:
        self._signals = signals

    def __getitem__(self, key: str) -> str:
        if key != "signals":
            raise KeyError(key)
        return reachability.describe(self._signals)

    def __iter__(self) -> Iterator[str]:
        return iter(("signals",))

    def __len__(self) -> int:
        return 1


def gpu_lost(rule: GpuLostRule, samples: Samples) -> list[Reading]:
    expected = samples.values(catalog.NODE_GPUS_EXPECTED.name)
    visible = samples.values(catalog.NODE_GPUS_VISIBLE.name)
    lost_gpus: dict[str, list[str]] = {}
    for s in samples.of(catalog.GPU_LOST.name):
        if s.value == 1.0:
            lost_gpus.setdefault(s.labels[0], []).append(s.labels[1])
    out = []
    for s in samples.of(catalog.NODE_GPUS_LOST.name):
        if isinstance(s.value, HistogramValue):
            continue
        node = s.labels[0]
        extra = {
            "expected": f"{expected.get(s.labels, 0):g}",
            "visible": f"{visible.get(s.labels, 0):g}",
            "gpus": ", ".join(lost_gpus.get(node, [])) or "not enumerated by the driver",
        }
        out.append(
            Reading(s.labels, {"node": node}, s.value, 0.0, s.value > 0, ("gpu", node), extra)
        )
    return out
