"""The daemon's `/metrics`, fetched under a deadline and indexed by catalogue metric, and
latency quantiles from its histograms (over the daemon's life, or over a `--watch`)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from reliability.catalog import Metric
from reliability.readapi import DaemonUnreachable, base_url, get, one_line

SCRAPE_TIMEOUT_S = 3.0
Labels = dict[str, str]


def metrics_url(listen: str, *, host: str | None = None) -> str:
    """The URL of `/metrics` for a daemon's `http.listen` (readapi.base_url)."""
    return base_url(listen, host=host) + "/metrics"


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative counts per upper bound, ascending, the last bound +Inf."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def since(self, earlier: Histogram) -> Histogram:
        """What was observed after `earlier`; all of self when the daemon restarted since."""
        bounds = [b for b, _ in self.buckets]
        if bounds != [b for b, _ in earlier.buckets] or self.count < earlier.count:
            return self
        return Histogram(
            tuple((b, n - m) for (b, n), (_, m) in zip(self.buckets, earlier.buckets, strict=True))
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

    def __init__(self, samples: dict[str, list[tuple[Labels, float]]]) -> None:
        self._samples = samples

    @classmethod
    def parse(cls, text: str) -> Exposition:
        """Raises ValueError when `text` is not the Prometheus text format."""
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return cls(samples)

    @classmethod
    def merged(cls, parts: list[Exposition]) -> Exposition:
        """Several daemons' scrapes as one (each collects its share of the fleet): every
        series of each, in the order given; where two report the same series (a target
        that just moved), lookups find the first's."""
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for part in parts:
            for name, series in part._samples.items():
                samples.setdefault(name, []).extend(series)
        return cls(samples)

    def values(self, metric: Metric) -> list[tuple[Labels, float]]:
        """Every series of a gauge or counter: (labels, value)."""
        return list(self._samples.get(metric.name, ()))

    def value(self, metric: Metric, **labels: str) -> float | None:
        """The one series whose labels include `labels`, or None when it is not exported."""
        for have, v in self._samples.get(metric.name, ()):
            if all(have.get(k) == want for k, want in labels.items()):
                return v
        return None

    def histograms(self, metric: Metric) -> dict[tuple[str, ...], Histogram]:
        """A histogram metric's series, keyed by the values of `metric.labels` in order."""
        per: dict[tuple[str, ...], dict[float, float]] = {}
        for labels, v in self._samples.get(metric.name + "_bucket", ()):
            key = tuple(labels.get(name, "") for name in metric.labels)
            per.setdefault(key, {}).setdefault(float(labels["le"]), v)
        return {k: Histogram(tuple(sorted(b.items()))) for k, b in per.items()}


def fetch(url: str, *, timeout: float = SCRAPE_TIMEOUT_S) -> Exposition:
    """Scrape `url`; DaemonUnreachable when nothing (or not an exposition) answers in time.

    One GET through the standard library: httpx's import alone would add a tenth of a
    second to every `reliability status`."""
    body = get(url, timeout=timeout)
    try:
        return Exposition.parse(body.decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise DaemonUnreachable(f"not a Prometheus exposition ({one_line(exc)})") from None


class LatencyWindow:
    """Latency histograms over the recent past, for `--watch`.

    The daemon's histograms count since it started, so a bad minute hardly moves a p95
    taken over days. A watch keeps its scrapes for `span` seconds and, once it has watched
    for `min_span`, subtracts the oldest from the newest. Before that it says "since the
    daemon started" (`covered` None) rather than quote a p95 over a handful of probes.
    """

    def __init__(
        self,
        *,
        span: float = 300.0,
        min_span: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.span = span
        self.min_span = min_span
        self._clock = clock
        self._scrapes: deque[tuple[float, dict[tuple[str, ...], Histogram]]] = deque()

    def observe(
        self, current: dict[tuple[str, ...], Histogram]
    ) -> tuple[dict[tuple[str, ...], Histogram], float | None]:
        """Add a scrape; return the histograms to take quantiles of and the seconds they
        cover (None: everything since the daemon started)."""
        now = self._clock()
        self._scrapes.append((now, current))
        while len(self._scrapes) > 1 and now - self._scrapes[1][0] >= self.span:
            self._scrapes.popleft()
        start, oldest = self._scrapes[0]
        covered = now - start
        if covered < self.min_span:
            return current, None
        recent = {k: h.since(oldest[k]) if k in oldest else h for k, h in current.items()}
        return recent, covered
