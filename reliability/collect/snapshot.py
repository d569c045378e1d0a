"""The latest samples of every target, and their Prometheus text exposition.

Scheduled jobs publish into the snapshot; a scrape only reads it, so a hung GPU or host
can never hang `/metrics`. A target's sample lines are rendered at the first scrape after
its publish and kept until the next one: a target published every second and scraped every
15 s is rendered once per scrape, not once per publish, and a scrape of 20,000 unchanged
series is a join of prepared strings. Each series' name and labels are rendered once and
kept (`_SeriesNames`): only values are formatted again.

Readers of a few metrics (detection) ask `by_metric()`, which gathers a metric's samples
only when asked; `generation` tells them whether anything they read changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect.base import HistogramValue, Sample


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _le(bound: float) -> str:
    return 'le="' + floatToGoString(bound) + '"'


# Series names kept before the cache starts again: far above a large fleet's (1,000 GPUs
# x 20 series, 3,000 endpoints x 30), and a bound on memory when label values churn
# (image digests, XID codes).
MAX_SERIES_NAMES = 500_000


class _SeriesNames:
    """`name{labels}` of each series, rendered once (escaping is most of a line's cost);
    safe to share between threads (a dict's get and set are atomic)."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, tuple[str, ...], str], str] = {}

    def __call__(
        self, m: Metric, values: tuple[str, ...], suffix: str = "", extra: str = ""
    ) -> str:
        key = (m.name + suffix, values, extra)
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= MAX_SERIES_NAMES:
                self._names = {}
            name = self._names[key] = m.name + suffix + _labels(m.labels, values, extra)
        return name


def render_sample(sample: Sample, name: _SeriesNames) -> str:
    """The exposition lines of one sample (several for a histogram), newline-terminated."""
    m, value, labels = sample.metric, sample.value, sample.labels
    if isinstance(value, HistogramValue):
        lines = [f"{name(m, labels, '_bucket', _le(le))} {count}\n" for le, count in value.buckets]
        lines.append(f"{name(m, labels, '_count')} {value.count}\n")
        lines.append(f"{name(m, labels, '_sum')} {floatToGoString(value.sum)}\n")
        return "".join(lines)
    return f"{name(m, labels)} {floatToGoString(value)}\n"


def _header(m: Metric) -> str:
    help_text = m.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {m.name} {help_text}\n# TYPE {m.name} {m.kind}\n"


def _by_metric(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.metric.name, []).append(s)
    return out


@dataclass(slots=True)
class _Published:
    samples: tuple[Sample, ...]
    by_metric: dict[str, list[Sample]]
    # metric name -> rendered lines of this target's samples of that metric; rendered by
    # the first scrape that reads them
    text: dict[str, str] | None = field(default=None)

    def rendered(self, names: _SeriesNames) -> dict[str, str]:
        text = self.text
        if text is None:
            text = {
                metric: "".join(render_sample(s, names) for s in samples)
                for metric, samples in self.by_metric.items()
            }
            self.text = text  # two scrapes at once render the same text: either one is kept
        return text


class ByMetric(Mapping[str, list[Sample]]):
    """Samples by metric name, gathered across targets only for the metrics asked for: a
    reader of a few metrics among the many collected (a rule) never touches the others."""

    def __init__(self, groups: Iterable[Mapping[str, list[Sample]]]) -> None:
        self._groups = list(groups)
        self._gathered: dict[str, list[Sample]] = {}

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> ByMetric:
        return cls([_by_metric(samples)])

    def __getitem__(self, name: str) -> list[Sample]:
        found = self._gathered.get(name)
        if found is None:
            found = [s for g in self._groups for s in g.get(name, ())]
            self._gathered[name] = found
        if not found:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for g in self._groups for name in g))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True, slots=True)
class TargetState:
    collector: str
    target: str
    ok: bool
    error: str | None
    duration: float
    last_success: float | None
    samples: tuple[Sample, ...]


class Snapshot:
    """Thread-safe latest state per (collector, target).

    `publish` replaces everything one target produced, so a target that stops answering
    loses its old values instead of showing them as if they were current.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[tuple[str, str], _Published] = {}
        self._states: dict[tuple[str, str], TargetState] = {}
        self._failures: dict[tuple[str, str], dict[str, int]] = {}  # target -> reason -> n
        self._names = _SeriesNames()
        self._generation = 0

    def publish(
        self,
        collector: str,
        target: str,
        *,
        ok: bool,
        duration: float,
        samples: Iterable[Sample] = (),
        error: str | None = None,
        reason: str | None = None,
        at: float | None = None,
        quiet_repeat: bool = False,
    ) -> None:
        """Record one collection of `target`: its samples, whether it worked, how long it took.

        `quiet_repeat`: the same samples and the same up as its last publish leave
        `generation` as it was (the liveness probe's rounds, each second: no rule reads
        their timing, so nothing a rule reads changed)."""
        at = time.time() if at is None else at
        key = (collector, target)
        own = tuple(samples)
        with self._lock:
            previous = self._states.get(key)
            last_success = at if ok else (previous.last_success if previous else None)
            counts = self._failures.setdefault(key, {})
            if not ok:
                counts[reason or "error"] = counts.get(reason or "error", 0) + 1
            failures = [
                Sample(catalog.TARGET_FAILURES, (*key, r), float(n)) for r, n in counts.items()
            ]
        meta = [
            Sample(catalog.TARGET_UP, key, 1.0 if ok else 0.0),
            Sample(catalog.TARGET_DURATION, key, duration),
            *failures,
        ]
        if last_success is not None:
            meta.append(Sample(catalog.TARGET_LAST_SUCCESS, key, last_success))
        everything = (*own, *meta)
        state = TargetState(collector, target, ok, error, duration, last_success, own)
        repeat = (
            quiet_repeat and previous is not None and previous.ok == ok and previous.samples == own
        )
        with self._lock:
            self._published[key] = _Published(everything, _by_metric(everything))
            self._states[key] = state
            if not repeat:
                self._generation += 1

    def forget(self, collector: str, target: str) -> None:
        """Drop a target that is no longer configured (or no longer this daemon's)."""
        key = (collector, target)
        with self._lock:
            known = self._published.pop(key, None) is not None
            self._states.pop(key, None)
            self._failures.pop(key, None)
            if known:
                self._generation += 1

    @property
    def generation(self) -> int:
        """Changes with every change of the samples (a publish, a forget): equal values
        mean the same samples, but for the timing of quiet repeats."""
        return self._generation

    def states(self) -> list[TargetState]:
        """Every target's latest state, sorted by collector then target."""
        with self._lock:
            return sorted(self._states.values(), key=lambda s: (s.collector, s.target))

    def samples(self, metric: Metric | None = None) -> list[Sample]:
        """The current samples, of one metric or all (the collectors' own and the meta)."""
        with self._lock:
            published = list(self._published.values())
        if metric is None:
            return [s for p in published for s in p.samples]
        return [s for p in published for s in p.by_metric.get(metric.name, ())]

    def by_metric(self) -> ByMetric:
        """The current samples by metric name, each metric gathered when first read."""
        with self._lock:
            return ByMetric([p.by_metric for p in self._published.values()])

    def exposition(self) -> str:
        """Prometheus text format (0.0.4) of everything in the snapshot."""
        with self._lock:
            published = list(self._published.values())
        texts = [p.rendered(self._names) for p in published]
        out: list[str] = []
        for m in catalog.ALL:
            lines = [t[m.name] for t in texts if m.name in t]
            if lines:
                out.append(_header(m))
                out.extend(lines)
        return "".join(out)
