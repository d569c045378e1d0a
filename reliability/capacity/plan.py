"""What a load test sends and what each of its steps measured: shared by the generator
(load.py, in its own process) and the command that runs it, which must not import Locust."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    """What one load test sends, and for how long. `steps`: the users of each step."""

    urls: list[str]
    model: str
    steps: list[int]
    step_s: float
    spawn_rate: float
    prompt_words: int
    max_tokens: int
    stream_share: float
    request_timeout: float
    # Objectives: a step that misses one ends the test when `stop_when_missed`.
    ttft_p95_s: float
    e2e_p95_s: float
    error_ratio: float
    stop_when_missed: bool = True
    seed: int = 0


@dataclass
class StepResult:
    users: int
    seconds: float
    requests: int
    failures: int
    qps: float
    tokens_per_s: float
    prompt_tokens: float  # per request
    completion_tokens: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    error_ratio: float
    generator_cpu: float  # the generator's CPU seconds per second of the step
    missed: list[str] = field(default_factory=list)  # the objectives it missed


def missed(plan: Plan, step: StepResult) -> list[str]:
    """The objectives a step missed, as a person reads them."""
    out = []
    if step.requests == 0 or step.error_ratio > plan.error_ratio:
        out.append(f"errors {step.error_ratio:.1%} > {plan.error_ratio:.1%}")
    if step.e2e_p95_s is not None and step.e2e_p95_s > plan.e2e_p95_s:
        out.append(f"e2e p95 {step.e2e_p95_s:.3f}s > {plan.e2e_p95_s:g}s")
    if step.ttft_p95_s is not None and step.ttft_p95_s > plan.ttft_p95_s:
        out.append(f"TTFT p95 {step.ttft_p95_s:.3f}s > {plan.ttft_p95_s:g}s")
    return out
