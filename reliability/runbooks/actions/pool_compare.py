"""`pool_compare`: while a canary holds, compare the two pools on the traffic they really
served, read from their engines' own `/metrics` (vLLM's OpenAI server or SGLang).

Every engine of both pools is scraped when the step starts and every `interval` after; what
each counter and histogram gained since the start (`exposition.increase`, `Histogram.since`:
a restarted engine counts from zero) is summed per pool: completions answered (`POST` on
the completion routes) and those answered 5xx, time to first token and end-to-end latency
(p95 as Prometheus's `histogram_quantile` takes it). After `for`, the new pool fails the
step (and so the run undoes itself, the traffic going back) when its error ratio is more
than `error_margin` above the old pool's, or a p95 above `max_latency_ratio` times the old
pool's (and more than `latency_slack` above it: the buckets are coarse). Errors fail the
step as soon as both pools have served `min_requests`. A pool that has served fewer by the
end of `for` is waited for up to the step's timeout, then the step fails: too little
traffic proves nothing (fail closed). So does an engine whose `/metrics` cannot be read or
is neither vLLM's nor SGLang's. The step's text gives both pools' figures and the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import Field, model_validator

from reliability import catalog
from reliability.catalog import EngineMetric
from reliability.config import Strict
from reliability.durations import Duration
from reliability.exposition import Exposition, Histogram, increase
from reliability.runbooks.actions.base import Action, NameTemplate, StepBase
from reliability.runbooks.checks import OpOutcome, RunContext, seconds
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, Op, Unit, host_port

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner

SCRAPE_TIMEOUT_S = 3.0
QUANTILE = 0.95
# The OpenAI routes that run a completion, as the engines' HTTP metrics label them.
COMPLETION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


class PoolCompareArgs(Strict):
    service: NameTemplate
    pool: NameTemplate = Field(..., description="the new pool, under watch")
    against: NameTemplate = Field(..., description="the pool it is compared with")
    for_: Duration = Field(30.0, alias="for", gt=0, le=3600)
    interval: Duration = Field(5.0, gt=0, description="how often the engines are read")
    min_requests: int = Field(
        20, ge=1, description="completions each pool must serve before the pools are compared"
    )
    error_margin: float = Field(
        0.02, ge=0, lt=1, description="how far the new pool's error ratio may exceed the old's"
    )
    max_latency_ratio: float = Field(1.5, gt=1)
    latency_slack: Duration = Field(
        0.2, description="a p95 this much slower or less is never worse: bucket resolution"
    )


class PoolCompareStep(StepBase):
    action: Literal["pool_compare"]
    args: PoolCompareArgs
    timeout: Duration = 120.0

    @model_validator(mode="after")
    def _outlasts_its_window(self) -> PoolCompareStep:
        if self.timeout <= self.args.for_ + SCRAPE_TIMEOUT_S:
            raise ValueError(
                f"timeout ({seconds(self.timeout)}) must be longer than `for` "
                f"({seconds(self.args.for_)}) and a read of the engines "
                f"({seconds(SCRAPE_TIMEOUT_S)})"
            )
        return self


@dataclass(frozen=True, slots=True)
class EngineKind:
    """Where one engine keeps what the comparison reads."""

    name: str
    prefix: str  # of its own metrics' names: how its exposition is recognised
    answers: EngineMetric  # HTTP answers by route, method and status
    route: str
    status: str
    ttft: EngineMetric
    e2e: EngineMetric


KINDS = (
    EngineKind(
        "vLLM",
        "vllm:",
        catalog.VLLM_HTTP_REQUESTS,
        "handler",
        "status",
        catalog.VLLM_TTFT,
        catalog.VLLM_E2E,
    ),
    EngineKind(
        "SGLang",
        "sglang:",
        catalog.SGLANG_HTTP_RESPONSES,
        "endpoint",
        "status_code",
        catalog.SGLANG_TTFT,
        catalog.SGLANG_E2E,
    ),
)


class Unreadable(Exception):
    """An engine's metrics cannot be read or used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Engine:
    node: str
    url: str  # of its /metrics


@dataclass
class Traffic:
    """What a pool's engines served between two scrapes."""

    requests: float = 0.0
    errors: float = 0.0
    ttft: Histogram = field(default_factory=lambda: Histogram(()))
    e2e: Histogram = field(default_factory=lambda: Histogram(()))

    @property
    def ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def add(self, other: Traffic) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.ttft = self.ttft.plus(other.ttft)
        self.e2e = self.e2e.plus(other.e2e)

    def shown(self, pool: str) -> str:
        return (
            f"{pool} {self.requests:.0f} completions, {self.errors:.0f} 5xx "
            f"({self.ratio:.1%}), TTFT p95 {_ms(self.ttft.quantile(QUANTILE))}, "
            f"end-to-end p95 {_ms(self.e2e.quantile(QUANTILE))}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def kind_of(exposition: Exposition) -> EngineKind | None:
    return next((k for k in KINDS if exposition.has_prefix(k.prefix)), None)


def served(engine: Engine, start: Exposition, now: Exposition) -> Traffic:
    """What `engine` served from `start` to `now`; Unreadable when it is no engine we read."""
    kind = kind_of(now)
    if kind is None:
        raise Unreadable(f"{engine.node}'s {engine.url} serves neither vLLM's nor SGLang's metrics")
    before = {_key(labels): v for labels, v in start.values(kind.answers)}
    traffic = Traffic(ttft=_gained(kind.ttft, start, now), e2e=_gained(kind.e2e, start, now))
    for labels, value in now.values(kind.answers):
        if labels.get(kind.route) in COMPLETION_ROUTES and labels.get("method") == "POST":
            gained = increase(value, before.get(_key(labels), 0.0))
            traffic.requests += gained
            if labels.get(kind.status, "").startswith("5"):
                traffic.errors += gained
    if traffic.e2e.count > 0 and not now.has(kind.answers):
        # SGLang before its HTTP middleware: the errors cannot be counted, so nothing can.
        raise Unreadable(
            f"{engine.node}'s {engine.url} has no {kind.answers.name}: {kind.name} there does "
            "not count its answers by status (a newer one does)"
        )
    return traffic


def _gained(metric: EngineMetric, start: Exposition, now: Exposition) -> Histogram:
    """A histogram's observations from `start` to `now`, its series (models, engines) added;
    a series that appeared since (created by its first observation) counts whole."""
    earlier, total = start.histograms(metric), Histogram(())
    for key, histogram in now.histograms(metric).items():
        total = total.plus(histogram.since(earlier[key]) if key in earlier else histogram)
    return total


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def scrape(run: RunContext, engine: Engine, deadline: float) -> Exposition:
    """One engine's /metrics, parsed; Unreadable when it does not answer one in time."""
    limit = max(0.1, min(SCRAPE_TIMEOUT_S, deadline - time.monotonic()))
    try:
        answer = run.http.get(engine.url, timeout=limit)
    except httpx.HTTPError as exc:
        raise Unreadable(f"{engine.node}'s {engine.url}: {type(exc).__name__}: {exc}") from None
    if answer.status_code != 200:
        raise Unreadable(f"{engine.node}'s {engine.url}: HTTP {answer.status_code}")
    try:
        return Exposition.parse(answer.text)
    except ValueError as exc:
        raise Unreadable(f"{engine.node}'s {engine.url}: not an exposition ({exc})") from None


@dataclass(frozen=True, slots=True)
class PoolCompare:
    """Read both pools' engines for `duration` (longer while a pool has served fewer than
    `min_requests`) and judge the new pool against the old one."""

    new_pool: str
    old_pool: str
    new_engines: tuple[Engine, ...]
    old_engines: tuple[Engine, ...]
    duration: float
    interval: float
    min_requests: int
    error_margin: float
    max_latency_ratio: float
    latency_slack: float

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        began = time.monotonic()
        engines = (*self.new_engines, *self.old_engines)
        try:
            start = {e: scrape(run, e, deadline) for e in engines}
        except Unreadable as exc:
            return OpOutcome(False, f"cannot compare the pools: {exc}")
        end = began + self.duration
        while True:
            at = time.monotonic()
            # Read at the window's end too; past it (waiting for traffic), every interval.
            wake = min(end, at + self.interval) if at < end else at + self.interval
            if run.stop.wait(max(0.0, wake - time.monotonic())):
                return OpOutcome(False, "stopped while comparing the pools")
            try:
                now = {e: scrape(run, e, deadline) for e in engines}
                new = self._pool(self.new_pool, self.new_engines, start, now)
                old = self._pool(self.old_pool, self.old_engines, start, now)
            except Unreadable as exc:
                return OpOutcome(False, f"cannot compare the pools: {exc}")
            figures = f"{new.shown(self.new_pool)}; {old.shown(self.old_pool)}"
            short = [
                f"{pool} {t.requests:.0f}"
                for pool, t in ((self.new_pool, new), (self.old_pool, old))
                if t.requests < self.min_requests
            ]
            # Leave time for one more read (every engine at its scrape timeout) and a verdict.
            last = time.monotonic() + self.interval + SCRAPE_TIMEOUT_S >= deadline
            why = None if short else self._errors(new, old)
            if why is None and not short and (last or time.monotonic() >= end):
                why = self._latency(new, old)
                if why is None:
                    took = seconds(round(time.monotonic() - began))
                    return OpOutcome(
                        True, f"pool {self.new_pool} compares well over {took}: {figures}"
                    )
            if why is not None:
                return OpOutcome(False, f"pool {self.new_pool} does worse ({why}): {figures}")
            if last:
                return OpOutcome(
                    False,
                    f"too little traffic to compare the pools: completions served "
                    f"({', '.join(short)}) fewer than min_requests {self.min_requests} in "
                    f"{seconds(round(time.monotonic() - began))}: {figures}",
                )

    def _pool(
        self,
        pool: str,
        engines: tuple[Engine, ...],
        start: dict[Engine, Exposition],
        now: dict[Engine, Exposition],
    ) -> Traffic:
        total = Traffic()
        for engine in engines:
            try:
                total.add(served(engine, start[engine], now[engine]))
            except ValueError:
                raise Unreadable(
                    f"pool {pool}'s engines keep latency in different buckets (engines or "
                    f"versions mixed): {engine.node}'s cannot be added to the others'"
                ) from None
        return total

    def _errors(self, new: Traffic, old: Traffic) -> str | None:
        if new.ratio > old.ratio + self.error_margin:
            return (
                f"errors: {new.ratio:.1%} of its completions 5xx against pool {self.old_pool}'s "
                f"{old.ratio:.1%}, {self.error_margin:.0%} more allowed"
            )
        return None

    def _latency(self, new: Traffic, old: Traffic) -> str | None:
        for what, mine, theirs in (("TTFT", new.ttft, old.ttft), ("end-to-end", new.e2e, old.e2e)):
            p95, old_p95 = mine.quantile(QUANTILE), theirs.quantile(QUANTILE)
            if p95 is None or old_p95 is None:
                continue  # nothing answered to time: the error ratio judged it
            if p95 > max(self.max_latency_ratio * old_p95, old_p95 + self.latency_slack):
                return (
                    f"{what} p95 latency above {self.max_latency_ratio:g}x pool {self.old_pool}'s"
                )
        return None


class PoolCompareAction(Action[PoolCompareStep]):
    step = PoolCompareStep
    checks = (PoolCompare,)

    def plan(self, step: PoolCompareStep, planner: Planner) -> list[Unit]:
        args = step.args
        service = planner.service(args.service)
        pools = planner.text(args.pool, "name"), planner.text(args.against, "name")
        engines = []
        for pool in pools:
            if pool not in service.pools:
                raise ScopeError(f"{pool!r} is not a pool of {service.name} ({service.pools})")
            nodes = planner.pool_nodes(pool)
            if not nodes:
                raise ScopeError(f"pool {pool!r} has no node serving to compare")
            engines.append(
                tuple(
                    Engine(n.name, f"http://{host_port(n.address, service.port)}/metrics")
                    for n in nodes
                )
            )
        check = PoolCompare(
            pools[0], pools[1], engines[0], engines[1], args.for_, args.interval,
            args.min_requests, args.error_margin, args.max_latency_ratio, args.latency_slack,
        )  # fmt: skip
        names = [", ".join(e.node for e in pool) for pool in engines]
        line = (
            f"read the engines' /metrics of pools {pools[0]} ({names[0]}) and {pools[1]} "
            f"({names[1]}) now and every {seconds(args.interval)} for {seconds(args.for_)}: "
            f"{pools[0]}'s error ratio (5xx of its completions) may exceed {pools[1]}'s by "
            f"{args.error_margin:.0%}, its TTFT and end-to-end p95 be at most "
            f"{args.max_latency_ratio:g}x (and {seconds(args.latency_slack)}) {pools[1]}'s; "
            f"each pool must serve {args.min_requests} completions first (fewer: it waits up "
            f"to the step's timeout, then fails)"
        )
        return [Unit(LOCAL, [Op(LOCAL, "check", line, check=check)], [])]
