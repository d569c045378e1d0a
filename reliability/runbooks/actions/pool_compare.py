"""`pool_compare`: while a canary holds, probe both pools' nodes with real chat completions
for `for` seconds and compare them: the new pool fails the step (and so the run undoes
itself, the traffic going back) when its error ratio is above both the old pool's and
`max_error_ratio`, or its p95 latency above `max_latency_ratio` times the old pool's (and
more than `latency_slack` above it: probe noise on fast answers is not a regression)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import Field

from reliability.config import Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import Action, NameTemplate, StepBase
from reliability.runbooks.checks import OpOutcome, RunContext, seconds
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, Op, Unit, host_port

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner

PROBE_TIMEOUT_S = 10.0


class PoolCompareArgs(Strict):
    service: NameTemplate
    pool: NameTemplate = Field(..., description="the new pool, under watch")
    against: NameTemplate = Field(..., description="the pool it is compared with")
    for_: Duration = Field(30.0, alias="for", gt=0, le=3600)
    interval: Duration = Field(0.5, gt=0)
    max_error_ratio: float = Field(0.05, ge=0, lt=1)
    max_latency_ratio: float = Field(1.5, gt=1)
    latency_slack: Duration = Field(
        0.2, description="a p95 this much slower or less is never worse: probe noise"
    )


class PoolCompareStep(StepBase):
    action: Literal["pool_compare"]
    args: PoolCompareArgs
    timeout: Duration = 120.0


@dataclass
class _Tally:
    sent: int = 0
    failed: int = 0
    last_error: str = ""
    latencies: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.failed / self.sent if self.sent else 0.0

    @property
    def p95(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def shown(self, pool: str) -> str:
        p95 = "-" if self.p95 is None else f"{self.p95 * 1000:.0f} ms"
        return f"{pool} {self.failed}/{self.sent} failed ({self.ratio:.0%}), p95 {p95}"


@dataclass(frozen=True, slots=True)
class PoolCompare:
    """Probe `new_urls` and `old_urls` in turn every `interval` for `duration`."""

    new_pool: str
    old_pool: str
    new_urls: tuple[str, ...]
    old_urls: tuple[str, ...]
    model: str
    duration: float
    interval: float
    max_error_ratio: float
    max_latency_ratio: float
    latency_slack: float

    def _probe(self, run: RunContext, url: str, model: str, tally: _Tally) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4}
        began = time.monotonic()
        tally.sent += 1
        try:
            answer = run.http.post(f"{url}/v1/chat/completions", json=body, timeout=PROBE_TIMEOUT_S)
            if answer.status_code != 200:
                raise ValueError(f"HTTP {answer.status_code}")
            answer.json()["choices"][0]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            tally.failed += 1
            tally.last_error = f"{url}: {exc or type(exc).__name__}"
            return
        tally.latencies.append(time.monotonic() - began)

    def _worse(self, new: _Tally, old: _Tally, final: bool) -> str | None:
        allowed = max(self.max_error_ratio, old.ratio)
        expected = max(1, int(self.duration / self.interval))
        # Fails early once the new pool can no longer end under the ratio allowed.
        if new.failed > allowed * (new.sent if final else expected):
            return f"errors: {new.last_error}"
        slower = (
            new.p95 is not None
            and old.p95 is not None
            and new.p95 > max(self.max_latency_ratio * old.p95, old.p95 + self.latency_slack)
        )
        if final and slower:
            return f"p95 latency above {self.max_latency_ratio:g}x pool {self.old_pool}'s"
        return None

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        model = self.model or _listed_model(run, self.old_urls[0])
        new, old = _Tally(), _Tally()
        news, olds = itertools.cycle(self.new_urls), itertools.cycle(self.old_urls)
        end = min(deadline, time.monotonic() + self.duration)
        while True:
            self._probe(run, next(news), model, new)
            self._probe(run, next(olds), model, old)
            if (why := self._worse(new, old, final=False)) is not None:
                break
            if time.monotonic() + self.interval >= end:
                why = self._worse(new, old, final=True)
                break
            if run.stop.wait(self.interval):
                return OpOutcome(False, f"stopped after {new.sent} probes of each pool")
        text = f"{new.shown(self.new_pool)}; {old.shown(self.old_pool)}"
        if why is not None:
            return OpOutcome(False, f"pool {self.new_pool} does worse ({why}): {text}")
        return OpOutcome(True, text)


def _listed_model(run: RunContext, url: str) -> str:
    try:
        return str(run.http.get(f"{url}/v1/models").json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return ""  # the probes then fail and say why


class PoolCompareAction(Action[PoolCompareStep]):
    step = PoolCompareStep
    checks = (PoolCompare,)

    def plan(self, step: PoolCompareStep, planner: Planner) -> list[Unit]:
        args = step.args
        service = planner.service(args.service)
        pools = planner.text(args.pool, "name"), planner.text(args.against, "name")
        urls = []
        for pool in pools:
            if pool not in service.pools:
                raise ScopeError(f"{pool!r} is not a pool of {service.name} ({service.pools})")
            nodes = planner.pool_nodes(pool)
            if not nodes:
                raise ScopeError(f"pool {pool!r} has no node serving to probe")
            urls.append(tuple(f"http://{host_port(n.address, service.port)}" for n in nodes))
        check = PoolCompare(
            pools[0], pools[1], urls[0], urls[1], service.model or "", args.for_,
            args.interval, args.max_error_ratio, args.max_latency_ratio, args.latency_slack,
        )  # fmt: skip
        line = (
            f"probe pools {pools[0]} and {pools[1]} with chat completions every "
            f"{seconds(args.interval)} for {seconds(args.for_)}: {pools[0]} may fail at most "
            f"{args.max_error_ratio:.0%} (or {pools[1]}'s ratio) and be at most "
            f"{args.max_latency_ratio:g}x (and {seconds(args.latency_slack)}) slower at p95"
        )
        return [Unit(LOCAL, [Op(LOCAL, "check", line, check=check)], [])]
