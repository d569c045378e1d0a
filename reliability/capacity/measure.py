"""Running a load test: its bounds checked, the generator started in its own process
(`python -m reliability.capacity.load`, which imports Locust there and nowhere else), its
JSON lines read as they come under a deadline, and the best step within the objectives."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from reliability.capacity.models import CapacityTest, Purpose
from reliability.capacity.plan import Plan, StepResult
from reliability.config import ServiceConfig

EXTRA = "pip install 'reliability[capacity]'"
# Beyond the plan's own time: the generator's start (Locust's import) and its last answers.
START_AND_DRAIN_S = 30.0
MAX_SPAWN_RATE = 1000.0
MIN_STEP_S = 1.0

Event = Callable[[str, dict[str, Any]], None]


class LoadRefused(ValueError):
    """The test is not bounded, or not allowed: nothing was sent."""


class LoadFailed(RuntimeError):
    """The load generator did not run to its end; the message says why."""


def missing_extra(module: str) -> str | None:
    """What to install when `module` (locust, matplotlib) is not there, else None."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed; {EXTRA}"
    return None


def steps_of(users: int, count: int) -> list[int]:
    """`count` steps of users rising evenly to `users` (fewer when users are fewer)."""
    count = max(1, min(count, users))
    return sorted({math.ceil(users * k / count) for k in range(1, count + 1)})


def plan_for(
    service: ServiceConfig,
    urls: list[str],
    *,
    model: str,
    users: int,
    spawn_rate: float,
    duration: float,
    steps: int,
) -> Plan:
    """A bounded plan for `service` within its `capacity` limits; LoadRefused when not."""
    limits = service.capacity
    if not urls:
        raise LoadRefused("the pool has no serving node to send load to")
    if not 1 <= users <= limits.max_users:
        raise LoadRefused(
            f"--users {users} is not bounded: give 1 to {limits.max_users} "
            f"(services.{service.name}.capacity.max_users)"
        )
    if not 0 < duration <= limits.max_duration:
        raise LoadRefused(
            f"--duration {duration:g}s is not bounded: give more than 0 and at most "
            f"{limits.max_duration:g}s (services.{service.name}.capacity.max_duration)"
        )
    if not 0 < spawn_rate <= MAX_SPAWN_RATE:
        raise LoadRefused(
            f"--spawn-rate {spawn_rate:g} must be above 0, at most {MAX_SPAWN_RATE:g}"
        )
    counts = steps_of(users, steps)
    step_s = duration / len(counts)
    if step_s < MIN_STEP_S:
        raise LoadRefused(
            f"{len(counts)} steps in {duration:g}s leave {step_s:.2f}s each; give a "
            f"--duration of at least {MIN_STEP_S * len(counts):g}s or fewer --steps"
        )
    objectives = service.objectives
    return Plan(
        urls=urls,
        model=model,
        steps=counts,
        step_s=step_s,
        spawn_rate=spawn_rate,
        prompt_words=limits.prompt_words,
        max_tokens=limits.max_tokens,
        stream_share=limits.stream_share,
        request_timeout=min(limits.request_timeout, step_s),
        ttft_p95_s=objectives.ttft_p95,
        e2e_p95_s=objectives.e2e_p95,
        error_ratio=objectives.error_ratio,
    )


def run(plan: Plan, on_event: Event = lambda kind, data: None) -> list[StepResult]:
    """Run the generator on `plan`; each JSON line goes to `on_event` as it comes. Returns
    the steps; LoadFailed when the generator cannot start, fails or overruns its time."""
    if problem := missing_extra("locust"):
        raise LoadFailed(problem)
    deadline_s = plan.step_s * len(plan.steps) + START_AND_DRAIN_S
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "reliability.capacity.load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    timer = threading.Timer(deadline_s, process.kill)
    timer.start()
    steps: list[StepResult] = []
    try:
        assert process.stdin and process.stdout and process.stderr
        process.stdin.write(json.dumps(asdict(plan)))
        process.stdin.close()
        for line in process.stdout:
            try:
                ((kind, data),) = json.loads(line).items()
            except (ValueError, AttributeError):
                continue  # not one of its reports
            if kind == "step":
                steps.append(StepResult(**data))
            on_event(kind, data)
        errors = process.stderr.read()
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0:
        tail = " ".join(errors.strip().splitlines()[-3:]) or f"exit status {code}"
        why = f"overran its {deadline_s:g}s" if code == -9 else tail
        raise LoadFailed(f"the load generator failed: {why}")
    return steps


def best(steps: list[StepResult]) -> StepResult | None:
    """The step that served the most requests/s within every objective, or None."""
    held = [s for s in steps if not s.missed]
    return max(held, key=lambda s: s.qps) if held else None


def record(
    service: str,
    pool: str,
    purpose: Purpose,
    by: str,
    started: datetime,
    nodes: list[str],
    steps: list[StepResult],
    watts: list[float | None],
) -> CapacityTest:
    """The row of a test (not yet stored): its best step's figures (none held: qps 0, the
    last step's errors and tokens), every step with the GPU power at its end."""
    chosen = best(steps)
    figures = chosen or (steps[-1] if steps else None)
    power = [*watts, *[None] * (len(steps) - len(watts))]
    return CapacityTest(
        service=service,
        pool=pool,
        purpose=purpose,
        started_at=started,
        finished_at=datetime.now(UTC),
        by=by,
        nodes=len(nodes),
        held=chosen is not None,
        users=chosen.users if chosen else 0,
        qps=chosen.qps if chosen else 0.0,
        tokens_per_s=chosen.tokens_per_s if chosen else 0.0,
        ttft_p50_s=chosen.ttft_p50_s if chosen else None,
        ttft_p95_s=chosen.ttft_p95_s if chosen else None,
        e2e_p95_s=chosen.e2e_p95_s if chosen else None,
        error_ratio=figures.error_ratio if figures else 1.0,
        prompt_tokens=figures.prompt_tokens if figures else 0.0,
        completion_tokens=figures.completion_tokens if figures else 0.0,
        gpu_power_watts=power[steps.index(chosen)] if chosen else None,
        steps=[asdict(s) | {"gpu_power_watts": w} for s, w in zip(steps, power, strict=True)],
    )
