"""The latest samples of every target, and their Prometheus text exposition.

Scheduled jobs publish into the snapshot; a scrape only reads it, so a hung GPU or host
can never hang `/metrics`. Each publish renders its sample lines once, so a scrape of
20,000 series is a join of prepared strings, not 20,000 objects formatted on demand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


def render_sample(sample: Sample) -> str:
    """The exposition lines of one sample (several for a histogram), newline-terminated."""
    m, value = sample.metric, sample.value
    if isinstance(value, HistogramValue):
        lines = [
            f"{m.name}_bucket{_labels(m.labels, sample.labels, _le(le))} {count}\n"
            for le, count in value.buckets
        ]
        base = _labels(m.labels, sample.labels)
        lines.append(f"{m.name}_count{base} {value.count}\n")
        lines.append(f"{m.name}_sum{base} {floatToGoString(value.sum)}\n")
        return "".join(lines)
    return f"{m.name}{_labels(m.labels, sample.labels)} {floatToGoString(value)}\n"


def _header(m: Metric) -> str:
    help_text = m.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {m.name} {help_text}\n# TYPE {m.name} {m.kind}\n"


@dataclass(frozen=True, slots=True)
class _Published:
    samples: tuple[Sample, ...]
    # metric name -> rendered lines of this target's samples of that metric
    text: dict[str, str]


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
        self._failures: dict[tuple[str, str, str], int] = {}
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
    ) -> None:
        """Record one collection of `target`: its samples, whether it worked, how long it took."""
        at = time.time() if at is None else at
        key = (collector, target)
        with self._lock:
            previous = self._states.get(key)
            last_success = at if ok else (previous.last_success if previous else None)
            if not ok:
                fkey = (collector, target, reason or "error")
                self._failures[fkey] = self._failures.get(fkey, 0) + 1
            failures = [
                Sample(catalog.TARGET_FAILURES, k, float(n))
                for k, n in self._failures.items()
                if k[:2] == key
            ]
        own = tuple(samples)
        meta = [
            Sample(catalog.TARGET_UP, key, 1.0 if ok else 0.0),
            Sample(catalog.TARGET_DURATION, key, duration),
            *failures,
        ]
        if last_success is not None:
            meta.append(Sample(catalog.TARGET_LAST_SUCCESS, key, last_success))
        everything = (*own, *meta)
        text: dict[str, str] = {}
        for s in everything:
            text[s.metric.name] = text.get(s.metric.name, "") + render_sample(s)
        state = TargetState(collector, target, ok, error, duration, last_success, own)
        with self._lock:
            self._published[key] = _Published(everything, text)
            self._states[key] = state
            self._generation += 1

    def forget(self, collector: str, target: str) -> None:
        """Drop a target that is no longer configured."""
        with self._lock:
            self._published.pop((collector, target), None)
            self._states.pop((collector, target), None)
            for k in [k for k in self._failures if k[:2] == (collector, target)]:
                del self._failures[k]
            self._generation += 1

    @property
    def generation(self) -> int:
        """Changes with every publish or forget: equal values mean the same samples."""
        return self._generation

    def states(self) -> list[TargetState]:
        """Every target's latest state, sorted by collector then target."""
        with self._lock:
            return sorted(self._states.values(), key=lambda s: (s.collector, s.target))

    def samples(self, metric: Metric | None = None) -> list[Sample]:
        """The current samples, of one metric or all (the collectors' own and the meta)."""
        with self._lock:
            published = list(self._published.values())
        return [s for p in published for s in p.samples if metric is None or s.metric is metric]

    def exposition(self) -> str:
        """Prometheus text format (0.0.4) of everything in the snapshot."""
        with self._lock:
            texts = [p.text for p in self._published.values()]
        out: list[str] = []
        for m in catalog.ALL:
            lines = [t[m.name] for t in texts if m.name in t]
            if lines:
                out.append(_header(m))
                out.extend(lines)
        return "".join(out)
