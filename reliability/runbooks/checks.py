"""Checks made from the reliability host, and what performing any operation returns.

A local operation (`Op.check`) carries its parameters as a frozen dataclass with one method,
`perform(run, deadline)`, so the plan's line and the run's behaviour come from one object
and the executor performs every kind the same way. `run` is what a check may use: the HTTP
client, the stop event, and the run's ways to approve a step, post a note, record a deploy
and change a node's state in the fleet (`RunContext`). A check never raises for a failure
of the system it looks at: that is an `OpOutcome` with `ok` False.

The two checks here (an HTTP answer, a first token) are shared by several actions; checks
that belong to one action live in that action's module (`actions/`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import httpx

from reliability.durations import format_duration

if TYPE_CHECKING:
    from reliability.capacity.models import CapacityTest
    from reliability.runbooks.actions.node_state import SetNodeState


@dataclass(slots=True)
class OpOutcome:
    ok: bool
    text: str  # what happened, in a line (the error when not ok)
    exit_status: int | None = None
    output: str = ""
    seconds: float = 0.0
    skipped: bool = False


class RunContext(Protocol):
    """What a check may use while a run performs it (perform.Performer is the real one)."""

    http: httpx.Client
    stop: threading.Event

    def confirm(self, prompt: str, approval: str, deadline: float) -> OpOutcome:
        """Whether `prompt` is approved, as its `approval` (terminal, auto, slack) asks, and
        by whom; an answer not in by `deadline` (monotonic) is a no."""
        ...

    def note(self, text: str) -> OpOutcome:
        """Post `text` to the run's incident."""
        ...

    def record_deploy(self, *, service: str, node: str, image: str) -> OpOutcome:
        """Record that `node` now runs `image` for `service`."""
        ...

    def set_node_state(self, change: SetNodeState) -> OpOutcome:
        """Change a node's live state in the fleet (actions/node_state.SetNodeState)."""
        ...

    def capacity_baseline(self, *, service: str, pool: str) -> CapacityTest | None:
        """The pool's capacity baseline (its newest held test), None when it has none."""
        ...

    def record_capacity(self, test: CapacityTest) -> None:
        """Keep a capacity test's record."""
        ...


@runtime_checkable
class Check(Protocol):
    """A local operation's parameters and behaviour (a frozen dataclass)."""

    def perform(self, run: RunContext, deadline: float) -> OpOutcome: ...


def seconds(value: float) -> str:
    return format_duration(value) if value else "0s"


def answer(
    http: httpx.Client, method: str, url: str, status: int, body: str | None, limit: float
) -> str:
    """'' when `url` answers as expected, else why not."""
    try:
        r = http.request(method, url, timeout=max(0.1, min(limit, 10.0)))
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(": ")
    if r.status_code != status:
        return f"HTTP {r.status_code}"
    if body is not None and body not in r.text:
        return f"{body!r} not in the body"
    return ""


@dataclass(frozen=True, slots=True)
class HttpWait:
    """Ask `url` every `interval` until it answers `status` (and `body` in it), `within`;
    then it must keep answering so for `settle` seconds (a balancer's old workers route for
    a moment after a reload)."""

    url: str
    within: float
    method: str = "GET"
    status: int = 200
    body: str | None = None
    interval: float = 1.0
    settle: float = 0.0

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        end = min(deadline, time.monotonic() + self.within)
        tries, good_since = 0, None
        while True:
            tries += 1
            why = answer(
                run.http, self.method, self.url, self.status, self.body, end - time.monotonic()
            )
            now = time.monotonic()
            good_since = (good_since or now) if not why else None
            if good_since is not None and now - good_since >= self.settle:
                return OpOutcome(True, f"{self.url} answered {self.status} (try {tries})")
            if now + self.interval >= end:
                return OpOutcome(
                    False, f"{self.url}: {why or 'did not stay answering'} after {tries} tries"
                )
            if run.stop.wait(self.interval):  # a wait of hours must not hold a shutdown
                return OpOutcome(False, f"{self.url}: stopped while waiting ({tries} tries)")


@dataclass(frozen=True, slots=True)
class FirstToken:
    """A streamed one-token chat completion on `base` whose first token comes in `ttft`."""

    base: str
    model: str | None
    ttft: float

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        model = self.model
        try:
            if model is None:
                listed = run.http.get(f"{self.base}/v1/models").json()["data"]
                model = listed[0]["id"]
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
                "stream": True,
            }
            limit = max(0.1, min(self.ttft, deadline - time.monotonic()))
            start = time.monotonic()
            timeout = httpx.Timeout(limit, connect=min(limit, 3.0))
            with run.http.stream(
                "POST", f"{self.base}/v1/chat/completions", json=body, timeout=timeout
            ) as r:
                if r.status_code != 200:
                    return OpOutcome(
                        False, f"{self.base}: completion answered HTTP {r.status_code}"
                    )
                for line in r.iter_lines():
                    if time.monotonic() - start > self.ttft:
                        break
                    if _has_token(line):
                        took = time.monotonic() - start
                        return OpOutcome(True, f"first token from {model} in {took:.2f}s")
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            return OpOutcome(False, f"{self.base}: completion failed: {exc or type(exc).__name__}")
        return OpOutcome(False, f"{self.base}: no first token within {seconds(self.ttft)}")


def _has_token(line: str) -> bool:
    if not line.startswith("data:") or line.strip() == "data: [DONE]":
        return False
    try:
        choices = json.loads(line[5:]).get("choices") or []
    except ValueError:
        return False
    delta = choices[0].get("delta", {}) if choices else {}
    return bool(delta.get("content")) or bool(choices and choices[0].get("finish_reason"))
