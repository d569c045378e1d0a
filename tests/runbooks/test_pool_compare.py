"""`pool_compare` on its own against the rig's inference stand-ins, each playing its
engine's /metrics from what it served: the verdict reads the engines, and whatever it
cannot read, or too little traffic, fails the comparison closed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from reliability.runbooks.actions.pool_compare import Engine, PoolCompare, PoolCompareStep
from reliability.testing.inference import DEFAULT_MODEL, InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup
from reliability.testing.loopback import free_port

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Run:
    """What the check uses of a run: its HTTP client and stop event."""

    http: httpx.Client = field(default_factory=lambda: httpx.Client(trust_env=False))
    stop: threading.Event = field(default_factory=threading.Event)


def engine(handle: InferenceHandle, node: str) -> Engine:
    return Engine(node, f"{handle.url}/metrics")


def compare(new: list[Engine], old: list[Engine], **overrides: float) -> PoolCompare:
    settings = {
        "duration": 0.3,
        "interval": 0.1,
        "min_requests": 5,
        "error_margin": 0.02,
        "max_latency_ratio": 1.5,
        "latency_slack": 0.2,
    } | overrides
    return PoolCompare("green", "blue", tuple(new), tuple(old), **settings)  # type: ignore[arg-type]


def serve(handle: InferenceHandle, count: int) -> None:
    for _ in range(count):
        httpx.post(f"{handle.url}/v1/chat/completions", json=CHAT, timeout=10)


@pytest.mark.parametrize("engine_kind", ["vllm", "sglang"])
def test_the_new_pool_failing_more_of_the_traffic_it_served_fails_the_step(
    inference_group: ServerGroup, engine_kind: str
):
    green = inference_group.start(InferenceSpec(pool="green", engine=engine_kind))
    blue = inference_group.start(InferenceSpec(pool="blue", engine=engine_kind))
    serve(green, 3)  # before the step: not in its window
    check = compare(
        [engine(green, "gpu-3")], [engine(blue, "gpu-1")], duration=1.0, min_requests=10
    )
    answer: list = []
    thread = threading.Thread(
        target=lambda: answer.append(check.perform(Run(), time.monotonic() + 10))
    )
    thread.start()
    time.sleep(0.2)  # the step has read its start
    serve(blue, 10)
    green.set_mode("overloaded", path="/v1/chat/completions", times=3)
    serve(green, 10)  # judged once its 10th is in: both pools have served min_requests
    thread.join(15)

    (outcome,) = answer
    assert not outcome.ok
    assert outcome.text.startswith(
        "pool green does worse (errors: 30.0% of its completions 5xx against pool blue's 0.0%"
    ), outcome.text
    assert "green 10 completions, 3 5xx (30.0%)" in outcome.text
    assert "blue 10 completions, 0 5xx (0.0%)" in outcome.text


def test_an_engine_whose_metrics_cannot_be_read_fails_the_comparison_closed(
    inference_group: ServerGroup,
):
    green = inference_group.start(InferenceSpec(pool="green"))
    blue = inference_group.start(InferenceSpec(pool="blue"))
    gone = Engine("gpu-4", f"http://127.0.0.1:{free_port()}/metrics")

    outcome = compare([engine(green, "gpu-3"), gone], [engine(blue, "gpu-1")]).perform(
        Run(), time.monotonic() + 10
    )

    assert not outcome.ok
    assert outcome.text.startswith(f"cannot compare the pools: gpu-4's {gone.url}: ConnectError")


def test_an_engine_serving_other_metrics_fails_the_comparison_closed(
    inference_group: ServerGroup,
):
    green = inference_group.start(InferenceSpec(pool="green", engine="tgi"))
    blue = inference_group.start(InferenceSpec(pool="blue"))

    outcome = compare([engine(green, "gpu-3")], [engine(blue, "gpu-1")]).perform(
        Run(), time.monotonic() + 10
    )

    assert not outcome.ok
    assert "gpu-3's" in outcome.text
    assert outcome.text.endswith("serves neither vLLM's nor SGLang's metrics")


def test_too_little_traffic_waits_past_its_window_then_fails_closed(inference_group):
    green = inference_group.start(InferenceSpec(pool="green"))
    blue = inference_group.start(InferenceSpec(pool="blue"))
    check = compare([engine(green, "gpu-3")], [engine(blue, "gpu-1")], duration=0.3)
    began = time.monotonic()

    # The step's deadline leaves a second beyond its window (less a read's timeout).
    outcome = check.perform(Run(), began + 0.3 + 1.0 + 3.0)

    assert not outcome.ok
    assert time.monotonic() - began > 0.8  # it waited past `for` for traffic
    assert outcome.text.startswith(
        "too little traffic to compare the pools: completions served (green 0, blue 0) "
        "fewer than min_requests 5"
    ), outcome.text


def test_a_step_must_outlast_its_window_and_one_read():
    step = {
        "id": "compare",
        "action": "pool_compare",
        "args": {"service": "chat", "pool": "green", "against": "blue", "for": "2m"},
    }
    with pytest.raises(ValueError, match=r"timeout \(2m\) must be longer than `for` \(2m\)"):
        PoolCompareStep.model_validate(step)
    assert PoolCompareStep.model_validate(step | {"timeout": "3m"}).args.for_ == 120.0


def test_a_pool_of_mixed_engines_cannot_add_their_latencies_and_fails_closed(
    inference_group: ServerGroup,
):
    vllm = inference_group.start(InferenceSpec(pool="green"))
    sglang = inference_group.start(InferenceSpec(pool="green", engine="sglang"))
    blue = inference_group.start(InferenceSpec(pool="blue"))

    outcome = compare(
        [engine(vllm, "gpu-3"), engine(sglang, "gpu-4")], [engine(blue, "gpu-1")]
    ).perform(Run(), time.monotonic() + 10)

    assert not outcome.ok
    assert outcome.text == (
        "cannot compare the pools: pool green's engines keep latency in different buckets "
        "(engines or versions mixed): gpu-4's cannot be added to the others'"
    )
