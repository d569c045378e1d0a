"""`http_check`: from this host, until a URL answers as expected, then optionally a soak
that fails the run (and so undoes it) above a share of failed checks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from reliability.config import Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import Action, StepBase, UrlTemplate
from reliability.runbooks.checks import HttpWait, OpOutcome, RunContext, answer, seconds
from reliability.runbooks.errors import ScopeError
from reliability.runbooks.ops import LOCAL, Op, Unit

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner


class HttpCheckArgs(Strict):
    url: UrlTemplate
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: int = Field(200, ge=100, le=599)
    expect_body: str | None = Field(None, description="a substring the body must contain")
    within: Duration = Field(30.0, description="retry until the first success, this long")
    soak: Duration = Field(0.0, description="then keep checking this long")
    max_error_ratio: float = Field(0.0, ge=0, le=1, description="share of failures the soak allows")
    interval: Duration = 1.0


class HttpCheckStep(StepBase):
    action: Literal["http_check"]
    args: HttpCheckArgs


@dataclass(frozen=True, slots=True)
class HttpSoak:
    """Ask `url` every `interval` for `soak`; fail above `max_error_ratio` failures."""

    url: str
    soak: float
    interval: float
    max_error_ratio: float
    method: str = "GET"
    status: int = 200
    body: str | None = None

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        end = min(deadline, time.monotonic() + self.soak)
        expected = max(1, int(self.soak / self.interval))
        asked = failed = 0
        while True:
            asked += 1
            why = answer(run.http, self.method, self.url, self.status, self.body, self.interval)
            if why:
                failed += 1
                if failed > self.max_error_ratio * expected:  # can no longer end under it
                    return OpOutcome(
                        False,
                        f"{failed} of {asked} checks of {self.url} failed, above "
                        f"{self.max_error_ratio:.0%} of the soak's {expected}; last: {why}",
                    )
            if time.monotonic() + self.interval >= end:
                break
            if run.stop.wait(self.interval):
                return OpOutcome(False, f"{self.url}: stopped {asked} checks into the soak")
        text = f"{failed} of {asked} checks of {self.url} failed ({failed / asked:.0%})"
        return OpOutcome(failed / asked <= self.max_error_ratio, text)


class HttpCheckAction(Action[HttpCheckStep]):
    step = HttpCheckStep
    checks = (HttpWait, HttpSoak)

    def plan(self, step: HttpCheckStep, planner: Planner) -> list[Unit]:
        a = step.args
        url = planner.text(a.url, "url")
        if not url.startswith(("http://", "https://")):
            raise ScopeError(f"url {url!r} does not start with http:// or https://")
        body = f" with {a.expect_body!r} in the body" if a.expect_body else ""
        wait = HttpWait(url, a.within, a.method, a.expect_status, a.expect_body, a.interval)
        checks = [
            Op(
                LOCAL,
                "http",
                f"{a.method} {url} until {a.expect_status}{body}, within {seconds(a.within)}",
                check=wait,
            )
        ]
        if a.soak:
            checks.append(
                Op(
                    LOCAL,
                    "http",
                    f"{a.method} {url} every {seconds(a.interval)} for "
                    f"{seconds(a.soak)}; fails above {a.max_error_ratio:.0%} errors",
                    note="a failure undoes the run, newest step first",
                    check=HttpSoak(
                        url,
                        a.soak,
                        a.interval,
                        a.max_error_ratio,
                        a.method,
                        a.expect_status,
                        a.expect_body,
                    ),
                )
            )
        return [Unit(LOCAL, checks, [])]
