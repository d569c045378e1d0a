"""A service's latency objectives and the bounds of its load tests, and the prices the
cost report weighs (`cost`). Capacity tests (`reliability capacity test`) and the cost
report (`reliability cost report`) read them; nothing here measures anything."""

from __future__ import annotations

from pydantic import Field

from reliability.config.fields import Strict
from reliability.durations import Interval


class Objectives(Strict):
    """What a pool must keep to count as holding a load: p95 of the time to the first
    streamed token, p95 of a whole answer, and the share of requests that fail."""

    ttft_p95: Interval = Field(2.0, description="p95 time to first token of a streamed answer")
    e2e_p95: Interval = Field(30.0, description="p95 time to a whole answer")
    error_ratio: float = Field(0.01, ge=0, lt=1, description="share of failed requests allowed")


class CapacityTestConfig(Strict):
    """The bounds every capacity test of the service stays within, and what it sends."""

    max_users: int = Field(256, ge=1, le=10_000, description="concurrent users, at most")
    max_duration: Interval = Field(600.0, le=3600, description="a whole test, at most")
    max_production_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="refuse a test of a pool carrying more than this share of the service's "
        "production traffic: its servers' weights over those of every server taking requests "
        "(not down, not backup) in the balancer's live file",
    )
    prompt_words: int = Field(256, ge=1, le=100_000, description="length of each prompt")
    max_tokens: int = Field(128, ge=1, le=100_000, description="tokens asked for per answer")
    stream_share: float = Field(0.5, ge=0, le=1, description="share of requests streamed")
    request_timeout: Interval = Field(60.0, description="deadline of one request")


class HostedPrice(Strict):
    """What the hosted API bills, per million tokens."""

    input_per_million_tokens: float | None = Field(None, ge=0)
    output_per_million_tokens: float | None = Field(None, ge=0)


class CostConfig(Strict):
    """Prices for `reliability cost report`, in `currency`. A price left out is named in
    the report, which shows what it can without it."""

    currency: str = Field("CNY", min_length=1, max_length=8)
    node_price: float | None = Field(
        None, ge=0, description="buying one serving node (GPUs included), amortised over --years"
    )
    staff_per_month: float | None = Field(None, ge=0, description="operations staff, per month")
    energy_price_per_kwh: float | None = Field(
        None, ge=0, description="default: dashboards.energy_price_per_kwh where the file sets it"
    )
    node_power_watts: float | None = Field(
        None,
        gt=0,
        description="a node's GPU power when no capacity test measured it (measured wins)",
    )
    hosted: HostedPrice = HostedPrice()
