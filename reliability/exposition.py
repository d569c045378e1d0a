"""The Prometheus text exposition, read: one scrape's samples indexed by metric (the
daemon's `catalog.Metric` or an engine's `catalog.EngineMetric`, never a spelled name),
histograms as cumulative buckets, and what a counter or histogram gained between two
scrapes, with `histogram_quantile` computed as Prometheus computes it.

Parsing is prometheus_client's (`text_string_to_metric_families`); `status` reads the
daemon's `/metrics` with it, `pool_compare` the serving engines'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

Labels = dict[str, str]


class Family(Protocol):
    """A catalogue entry: `catalog.Metric` or `catalog.EngineMetric`."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...


def increase(now: float, before: float) -> float:
    """What a counter gained since `before`; all of `now` when it was reset (a restart)."""
    return now - before if now >= before else now


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative counts per upper bound, ascending, the last bound +Inf."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def since(self, earlier: Histogram) -> Histogram:
        """What was observed after `earlier`; all of self when the server restarted since."""
        bounds = [b for b, _ in self.buckets]
        if bounds != [b for b, _ in earlier.buckets] or self.count < earlier.count:
            return self
        return Histogram(
            tuple((b, n - m) for (b, n), (_, m) in zip(self.buckets, earlier.buckets, strict=True))
        )

    def plus(self, other: Histogram) -> Histogram:
        """Both together, as `sum by (le)` adds series with the same bounds; a histogram
        with other bounds cannot be added (ValueError)."""
        if not self.buckets:
            return other
        if not other.buckets:
            return self
        if [b for b, _ in self.buckets] != [b for b, _ in other.buckets]:
            raise ValueError("histograms with different bucket bounds cannot be added")
        return Histogram(
            tuple((b, n + m) for (b, n), (_, m) in zip(self.buckets, other.buckets, strict=True))
        )

    def quantile(self, q: float) -> float | None:
        """`histogram_quantile` as Prometheus computes it: linear within the bucket the rank
        falls in; the largest finite bound when it falls in +Inf; None with no observations."""
        total = self.count
        if total <= 0 or not self.buckets:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower
                if cumulative == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower


class Exposition:
    """One scrape's samples, looked up by catalogue metric (never by a spelled name)."""

    def __init__(
        self, samples: dict[str, list[tuple[Labels, float]]], families: frozenset[str] = frozenset()
    ) -> None:
        self._samples = samples
        self._families = families | set(samples)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        """Raises ValueError when `text` is not the Prometheus text format."""
        samples: dict[str, list[tuple[Labels, float]]] = {}
        families = set()
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for s in family.samples:
                samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return cls(samples, frozenset(families))

    @classmethod
    def merged(cls, parts: list[Exposition]) -> Exposition:
        """Several daemons' scrapes as one (each collects its share of the fleet): every
        series of each, in the order given; where two report the same series (a target
        that just moved), lookups find the first's."""
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for part in parts:
            for name, series in part._samples.items():
                samples.setdefault(name, []).extend(series)
        return cls(samples, frozenset().union(*(part._families for part in parts)))

    def has(self, metric: Family) -> bool:
        """Whether the scrape declares `metric`, with series or (none observed yet) without."""
        return bool({metric.name, metric.name.removesuffix("_total")} & self._families)

    def has_prefix(self, prefix: str) -> bool:
        """Whether any metric of the scrape is named `prefix...` (an engine's own, `vllm:`)."""
        return any(name.startswith(prefix) for name in self._families)

    def values(self, metric: Family) -> list[tuple[Labels, float]]:
        """Every series of a gauge or counter: (labels, value)."""
        return list(self._samples.get(metric.name, ()))

    def value(self, metric: Family, **labels: str) -> float | None:
        """The one series whose labels include `labels`, or None when it is not exported."""
        for have, v in self._samples.get(metric.name, ()):
            if all(have.get(k) == want for k, want in labels.items()):
                return v
        return None

    def histograms(self, metric: Family) -> dict[tuple[str, ...], Histogram]:
        """A histogram metric's series, keyed by the values of `metric.labels` in order."""
        per: dict[tuple[str, ...], dict[float, float]] = {}
        for labels, v in self._samples.get(metric.name + "_bucket", ()):
            key = tuple(labels.get(name, "") for name in metric.labels)
            per.setdefault(key, {}).setdefault(float(labels["le"]), v)
        return {k: Histogram(tuple(sorted(b.items()))) for k, b in per.items()}
