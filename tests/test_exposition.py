"""Reading an engine's exposition: counters and histograms over a window between two
scrapes, and the p95 of the window as Prometheus's `histogram_quantile` computes it."""

from __future__ import annotations

import pytest

from reliability import catalog
from reliability.exposition import Exposition, Histogram, increase

INF = float("inf")


def e2e(model: str, buckets: dict[str, int], total: float) -> str:
    """vLLM's end-to-end histogram as its server writes it (only some of its bounds)."""
    labels = f'engine="0",model_name="{model}"'
    lines = [
        "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
    ]
    lines += [
        f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="{le}"}} {n}'
        for le, n in buckets.items()
    ]
    count = buckets["+Inf"]
    lines += [
        f"vllm:e2e_request_latency_seconds_count{{{labels}}} {count}",
        f"vllm:e2e_request_latency_seconds_sum{{{labels}}} {total}",
    ]
    return "\n".join(lines) + "\n"


def window(start: str, end: str) -> Histogram:
    (before,) = Exposition.parse(start).histograms(catalog.VLLM_E2E).values()
    (after,) = Exposition.parse(end).histograms(catalog.VLLM_E2E).values()
    return after.since(before)


def test_the_p95_of_a_window_comes_from_the_bucket_deltas_not_the_whole_life():
    start = e2e("m", {"0.1": 10, "0.5": 18, "1.0": 20, "+Inf": 20}, 6.0)
    end = e2e("m", {"0.1": 12, "0.5": 38, "1.0": 48, "+Inf": 50}, 25.0)

    served = window(start, end)

    # By hand: the window saw 2 answers <= 0.1 s, 18 in (0.1, 0.5], 8 in (0.5, 1], 2 slower.
    assert served.buckets == ((0.1, 2.0), (0.5, 20.0), (1.0, 28.0), (INF, 30.0))
    # p90: rank 0.9 * 30 = 27, the 7th of the 8 in (0.5, 1]: 0.5 + 0.5 * 7/8.
    assert served.quantile(0.9) == pytest.approx(0.9375)
    # p50: rank 15, the 13th of the 18 in (0.1, 0.5]: 0.1 + 0.4 * 13/18.
    assert served.quantile(0.5) == pytest.approx(0.1 + 0.4 * 13 / 18)
    # p95: rank 28.5 falls in +Inf: the largest finite bound, as Prometheus answers.
    assert served.quantile(0.95) == 1.0
    # Over the server's whole life the p90 would read 0.5 + 0.5 * (45 - 38) / 10 instead.
    (life,) = Exposition.parse(end).histograms(catalog.VLLM_E2E).values()
    assert life.quantile(0.9) == pytest.approx(0.85)


def test_a_pool_adds_its_engines_buckets_and_a_restarted_engine_counts_from_zero():
    a = window(
        e2e("m", {"0.1": 0, "0.5": 0, "1.0": 0, "+Inf": 0}, 0.0),
        e2e("m", {"0.1": 9, "0.5": 10, "1.0": 10, "+Inf": 10}, 1.0),
    )
    # Restarted during the window: its counts went down, so all it has is new.
    b = window(
        e2e("m", {"0.1": 50, "0.5": 80, "1.0": 90, "+Inf": 100}, 60.0),
        e2e("m", {"0.1": 0, "0.5": 0, "1.0": 10, "+Inf": 10}, 8.0),
    )
    pool = a.plus(b)
    assert pool.buckets == ((0.1, 9.0), (0.5, 10.0), (1.0, 20.0), (INF, 20.0))
    # p95: rank 19, the 9th of the 10 in (0.5, 1]: 0.5 + 0.5 * 9/10.
    assert pool.quantile(0.95) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="bucket bounds"):
        pool.plus(Histogram(((0.3, 1.0), (INF, 1.0))))
    assert increase(7.0, 3.0) == 4.0 and increase(2.0, 30.0) == 2.0  # a reset


def test_a_counter_declared_without_series_is_known_to_the_scrape():
    text = (
        "# HELP http_requests_total Total number of requests by method, status and handler.\n"
        "# TYPE http_requests_total counter\n"
    )
    scrape = Exposition.parse(text)
    assert scrape.has(catalog.VLLM_HTTP_REQUESTS)
    assert scrape.values(catalog.VLLM_HTTP_REQUESTS) == []
    assert not scrape.has(catalog.SGLANG_HTTP_RESPONSES)
    assert not scrape.has_prefix("vllm:")
