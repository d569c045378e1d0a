"""The inference stand-in's /metrics speaks the serving engine it plays, with the values of
the chat completions it served: what the Serving engines dashboard is checked against."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from reliability import catalog
from reliability.dashboards.build import engine_series
from reliability.testing.inference import DEFAULT_MODEL, InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "say hello"}]}
# Older vLLM's name of the KV-cache gauge: dashboards fall back to it, the stand-in is new.
NOT_SERVED = {catalog.VLLM_GPU_CACHE_USAGE}


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(handle: InferenceHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, as Prometheus stores it (prometheus_client's parser would add `_total`
    to TGI's and Triton's counters, which those engines do not)."""
    reply = httpx.get(f"{handle.url}/metrics", timeout=5)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in reply.text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, labels, number = match.groups()
        samples[(name, tuple(sorted(_LABEL.findall(labels or ""))))] = float(number)
    return samples


def value(samples, name: str, **labels: str) -> float:
    found = [
        v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def chat(handle: InferenceHandle, **extra) -> httpx.Response:
    return httpx.post(f"{handle.url}/v1/chat/completions", json=CHAT | extra, timeout=10)


def stream(handle: InferenceHandle) -> None:
    body = CHAT | {"stream": True}
    with httpx.stream("POST", f"{handle.url}/v1/chat/completions", json=body, timeout=10) as r:
        for _ in r.iter_lines():
            pass


@pytest.mark.parametrize("engine", catalog.ENGINES)
def test_each_engine_flavour_serves_its_own_catalogue_names(
    inference_group: ServerGroup, engine: str
):
    handle = inference_group.start(InferenceSpec(engine=engine))
    chat(handle)
    stream(handle)

    served = {name for name, _ in scrape(handle)}
    assert served <= engine_series(), served - engine_series()
    mine = [m for m in catalog.ENGINE_METRICS if m.engine == engine and m not in NOT_SERVED]
    family_of = {
        m.name + suffix: m.name
        for m in mine
        for suffix in (("_bucket", "_sum", "_count") if m.kind == "histogram" else ("",))
    }
    assert {family_of.get(name) for name in served} == {m.name for m in mine}


def test_vllm_counts_waiting_running_kv_cache_and_latencies_from_what_it_served(
    inference_group: ServerGroup,
):
    handle = inference_group.start(InferenceSpec(engine="vllm", kv_cache_tokens=100))
    chat(handle)
    stream(handle)
    handle.set_mode("overloaded", path="/v1/chat/completions", times=1)
    assert chat(handle).status_code == 503

    idle = scrape(handle)
    assert value(idle, "vllm:request_success_total", finished_reason="stop") == 2
    assert value(idle, "vllm:request_success_total", finished_reason="length") == 0
    assert value(idle, "vllm:time_to_first_token_seconds_count") == 2
    # The 503 was never served: no latency, no success.
    assert value(idle, "vllm:e2e_request_latency_seconds_count") == 2
    assert value(idle, "vllm:e2e_request_latency_seconds_sum") > 0
    assert value(idle, "vllm:num_requests_running") == value(idle, "vllm:num_requests_waiting") == 0
    assert value(idle, "vllm:kv_cache_usage_perc") == 0
    labels = {
        k: v for (n, ls), _ in idle.items() if n == "vllm:num_requests_running" for k, v in ls
    }
    assert labels == {"model_name": DEFAULT_MODEL, "engine": "0"}

    # One request held in its delay (waiting), one streaming slowly (running, in the cache).
    handle.set_mode("slow", path="/v1/chat/completions", delay_s=1.5, times=1)
    waiting = threading.Thread(target=chat, args=(handle,))
    waiting.start()
    deadline = time.monotonic() + 5
    while handle.stats()["in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    handle.set_mode("ok", path="/v1/chat/*", interval_s=0.3, times=1)
    body = CHAT | {"stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{handle.url}/v1/chat/completions", json=body, timeout=10) as r:
        lines = r.iter_lines()
        next(lines)
        time.sleep(0.3)
        busy = scrape(handle)
        for _ in lines:
            pass
    waiting.join(10)

    assert value(busy, "vllm:num_requests_waiting") == 1
    assert value(busy, "vllm:num_requests_running") == 1
    assert 0 < value(busy, "vllm:kv_cache_usage_perc") <= 1
    done = scrape(handle)
    assert value(done, "vllm:request_success_total", finished_reason="stop") == 3
    assert value(done, "vllm:request_success_total", finished_reason="length") == 1  # max_tokens
    assert value(done, "vllm:num_requests_waiting") == value(done, "vllm:num_requests_running") == 0
    # The delayed request waited 1.5 s before its first token.
    assert value(done, "vllm:time_to_first_token_seconds_bucket", le="1.0") == 3
    assert value(done, "vllm:time_to_first_token_seconds_count") == 4


def test_vllm_and_sglang_count_every_answer_by_route_and_status_as_their_servers_do(
    inference_group: ServerGroup,
):
    """vLLM's OpenAI server (prometheus_fastapi_instrumentator): status classes, /health
    left out, a latency histogram per route; SGLang's middleware: exact codes, /health in."""
    for engine in ("vllm", "sglang"):
        handle = inference_group.start(InferenceSpec(engine=engine))
        chat(handle)
        stream(handle)
        httpx.get(f"{handle.url}/health").raise_for_status()
        httpx.get(f"{handle.url}/v1/models").raise_for_status()
        handle.set_mode("overloaded", path="/v1/chat/completions", times=1)
        assert chat(handle).status_code == 503
        assert chat(handle, model="another/model").status_code == 404

        samples = scrape(handle)
        if engine == "vllm":
            requests = {
                dict(ls)["status"]: v
                for (n, ls), v in samples.items()
                if n == "http_requests_total" and ("handler", "/v1/chat/completions") in ls
            }
            assert requests == {"2xx": 2, "4xx": 1, "5xx": 1}
            assert value(samples, "http_requests_total", handler="/v1/models") == 1
            assert not [ls for (n, ls), _ in samples.items() if ("handler", "/health") in ls]
            post = {"handler": "/v1/chat/completions", "method": "POST"}
            assert value(samples, "http_request_duration_seconds_count", **post) == 4
            assert value(samples, "http_request_duration_seconds_bucket", le="+Inf", **post) == 4
            bounds = {
                dict(ls)["le"]
                for (n, ls), _ in samples.items()
                if n == "http_request_duration_seconds_bucket"
            }
            assert bounds == {"0.1", "0.5", "1.0", "+Inf"}  # the instrumentator's defaults
        else:
            chats = {"endpoint": "/v1/chat/completions", "method": "POST"}
            assert value(samples, "sglang:http_responses_total", status_code="200", **chats) == 2
            assert value(samples, "sglang:http_responses_total", status_code="503", **chats) == 1
            assert value(samples, "sglang:http_responses_total", status_code="404", **chats) == 1
            assert value(samples, "sglang:http_responses_total", endpoint="/health") == 1


def test_triton_counts_failures_and_first_responses_in_milliseconds(inference_group):
    handle = inference_group.start(InferenceSpec(engine="triton"))
    stream(handle)
    handle.set_mode("overloaded", path="/v1/chat/completions", times=1)
    chat(handle)

    samples = scrape(handle)
    assert value(samples, "nv_inference_request_success") == 1
    assert value(samples, "nv_inference_request_failure") == 1
    assert value(samples, "nv_inference_first_response_histogram_ms_count") == 1
    assert 0 < value(samples, "nv_inference_first_response_histogram_ms_sum") < 1000
    assert value(samples, "nv_inference_request_duration_us") > 0
    fraction = value(samples, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction")
    assert fraction == 0


def test_metrics_answer_whatever_mode_the_stand_in_is_in(inference_group: ServerGroup):
    handle = inference_group.start(InferenceSpec(engine="sglang"))
    handle.set_mode("overloaded")
    assert chat(handle).status_code == 503
    assert value(scrape(handle), "sglang:num_requests_total") == 0
