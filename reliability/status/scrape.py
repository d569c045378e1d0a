"""The daemon's `/metrics`, fetched under a deadline and indexed by catalogue metric, and
latency quantiles from its histograms (over the daemon's life, or over a `--watch`)."""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable

from reliability.exposition import Exposition, Histogram

SCRAPE_TIMEOUT_S = 3.0


class DaemonUnreachable(Exception):
    """`/metrics` gave no Prometheus exposition; the message says why, in one line."""


def metrics_url(listen: str) -> str:
    """The URL of `/metrics` for the daemon's `http.listen` (a wildcard means this host)."""
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def fetch(url: str, *, timeout: float = SCRAPE_TIMEOUT_S) -> Exposition:
    """Scrape `url`; DaemonUnreachable when nothing (or not an exposition) answers in time.

    One GET through the standard library: httpx's import alone would add a tenth of a
    second to every `reliability status`."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, reason, body = response.status, response.reason, response.read()
    except urllib.error.HTTPError as exc:
        raise DaemonUnreachable(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(cause, TimeoutError):
            raise DaemonUnreachable(f"no answer within {timeout:g}s") from None
        raise DaemonUnreachable(_one_line(cause)) from None
    if status != 200:
        raise DaemonUnreachable(f"HTTP {status} {reason}")
    try:
        return Exposition.parse(body.decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise DaemonUnreachable(f"not a Prometheus exposition ({_one_line(exc)})") from None


def _one_line(exc: object) -> str:
    text = str(exc).strip()
    # "[Errno 111] Connection refused" -> "connection refused"
    text = re.sub(r"^\[Errno -?\d+\] ", "", text.splitlines()[0] if text else "")
    return text[:1].lower() + text[1:] if text else type(exc).__name__


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
