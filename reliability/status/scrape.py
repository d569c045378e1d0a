"""The daemon's `/metrics`, fetched under a deadline and indexed by catalogue metric, and
latency quantiles from its histograms (over the daemon's life, or over a `--watch`)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from reliability.exposition import Exposition, Histogram
from reliability.readapi import DaemonUnreachable, base_url, get, one_line

SCRAPE_TIMEOUT_S = 3.0


def metrics_url(listen: str, *, host: str | None = None) -> str:
    """The URL of `/metrics` for a daemon's `http.listen` (readapi.base_url)."""
    return base_url(listen, host=host) + "/metrics"


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
