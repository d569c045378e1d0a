"""The inference stand-in answers like vLLM and fails the ways a busy hosted API does."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from reliability.testing import tls
from reliability.testing.inference import DEFAULT_MODEL, InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup, serve_many

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "say hello"}]}


def test_health_models_and_identity_headers(inference_server: InferenceHandle) -> None:
    health = httpx.get(f"{inference_server.url}/health", timeout=5)
    models = httpx.get(f"{inference_server.url}/v1/models", timeout=5)

    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "pool": "blue",
        "image": inference_server.spec.image,
        "model": DEFAULT_MODEL,
    }
    assert health.headers["x-pool"] == "blue"
    assert health.headers["x-image"] == inference_server.spec.image
    assert models.json()["object"] == "list"
    assert [card["id"] for card in models.json()["data"]] == [DEFAULT_MODEL]


def test_chat_completion_has_openai_shape_and_usage(inference_server: InferenceHandle) -> None:
    answer = httpx.post(f"{inference_server.url}/v1/chat/completions", json=CHAT, timeout=5).json()

    assert answer["object"] == "chat.completion"
    assert answer["model"] == DEFAULT_MODEL
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"]
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_streaming_is_server_sent_events_ending_in_done(inference_server: InferenceHandle) -> None:
    body = CHAT | {"stream": True, "max_tokens": 4, "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream(
        "POST", f"{inference_server.url}/v1/chat/completions", json=body, timeout=5
    ) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line.removeprefix("data: "))

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len(text.split()) == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_unknown_model_is_a_404_like_vllm(inference_server: InferenceHandle) -> None:
    reply = httpx.post(
        f"{inference_server.url}/v1/chat/completions", json=CHAT | {"model": "gpt-x"}, timeout=5
    )

    assert reply.status_code == 404
    assert "gpt-x" in reply.json()["error"]["message"]


def test_overloaded_answers_503_with_openai_error(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("overloaded")

    reply = httpx.post(f"{inference_server.url}/v1/chat/completions", json=CHAT, timeout=5)

    assert reply.status_code == 503
    assert reply.json()["error"]["message"].startswith("Server busy")
    assert reply.json()["error"]["type"] == "server_error"
    assert reply.headers["x-pool"] == "blue"


def test_rate_limited_answers_429_with_retry_after(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("rate_limited", retry_after_s=7)

    reply = httpx.post(f"{inference_server.url}/v1/chat/completions", json=CHAT, timeout=5)

    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "7"
    assert reply.json()["error"]["code"] == "rate_limit_exceeded"


def test_slow_delays_the_answer(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("slow", delay_s=0.4)

    started = time.monotonic()
    reply = httpx.get(f"{inference_server.url}/health", timeout=5)

    assert reply.status_code == 200
    assert time.monotonic() - started >= 0.4


def test_garbage_is_a_200_that_is_not_json(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("garbage")

    reply = httpx.post(f"{inference_server.url}/v1/chat/completions", json=CHAT, timeout=5)

    assert reply.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        reply.json()


def test_stall_outlives_read_timeouts_but_not_a_total_deadline(
    inference_server: InferenceHandle,
) -> None:
    inference_server.set_mode("stall", interval_s=0.1)

    async def call() -> httpx.Response:
        # A read timeout of 0.5 s never fires: a keep-alive arrives every 0.1 s.
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as client:
            reply = await client.post(
                f"{inference_server.url}/v1/chat/completions", json=CHAT | {"stream": True}
            )
            return reply

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(call(), timeout=1.5))
    assert 1.4 < time.monotonic() - started < 3
    # The client hung up: the server sees the stream end and stops counting it.
    deadline = time.monotonic() + 3
    while inference_server.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert inference_server.stats()["in_flight"] == 0


def test_stall_sends_headers_then_keepalives_only(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("stall", interval_s=0.05)
    received = b""
    with httpx.stream(
        "POST",
        f"{inference_server.url}/v1/chat/completions",
        json=CHAT | {"stream": True},
        timeout=2,
    ) as reply:
        assert reply.status_code == 200
        for chunk in reply.iter_raw():
            received += chunk
            if len(received) >= 3 * len(b": keep-alive\n\n"):
                break
    assert set(received.split(b"\n\n")) <= {b": keep-alive", b""}

    with httpx.stream(
        "POST", f"{inference_server.url}/v1/chat/completions", json=CHAT, timeout=2
    ) as reply:
        assert reply.headers["content-type"].startswith("application/json")
        assert next(reply.iter_raw()).strip() == b""


def test_die_resets_connections_and_stops_listening(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("die")

    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{inference_server.url}/health", timeout=5)
    deadline = time.monotonic() + 5
    while inference_server.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    assert inference_server.exit_code == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{inference_server.url}/health", timeout=5)


def test_modes_by_path_and_for_a_number_of_requests(inference_server: InferenceHandle) -> None:
    inference_server.set_mode("overloaded", path="/v1/*", times=2)
    url = inference_server.url

    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    statuses = [httpx.get(f"{url}/v1/models", timeout=5).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]


def test_mode_is_settable_over_http_and_stats_count_requests(
    inference_server: InferenceHandle,
) -> None:
    url = inference_server.url
    assert httpx.post(f"{url}/_rig/mode", json={"mode": "overloaded"}, timeout=5).status_code == 200
    httpx.get(f"{url}/health", timeout=5)
    assert httpx.post(f"{url}/_rig/mode", json={"mode": "ok"}, timeout=5).json() == {"rules": []}
    httpx.get(f"{url}/health", timeout=5)
    bad = httpx.post(f"{url}/_rig/mode", json={"mode": "melt"}, timeout=5)

    stats = httpx.get(f"{url}/_rig/stats", timeout=5).json()

    assert bad.status_code == 400
    assert stats["requests"] == 2
    assert stats["by_path"] == {"/health": 2}
    assert stats["by_status"] == {"503": 1, "200": 1}


def test_serve_many_answers_on_every_server() -> None:
    specs = [InferenceSpec(pool="blue" if i % 2 else "green", image=f"img:{i}") for i in range(20)]
    with serve_many(specs) as group:
        with httpx.Client(timeout=5) as client:
            seen = [client.get(f"{h.url}/health").json() for h in group.handles]
        assert len({h.port for h in group.handles}) == 20
    assert [(s["pool"], s["image"]) for s in seen] == [(s.pool, s.image) for s in specs]
    assert not any(h.alive for h in group.handles)


def test_group_refuses_a_taken_port(
    inference_group: ServerGroup, inference_server: InferenceHandle
) -> None:
    with pytest.raises(OSError):
        inference_group.start(InferenceSpec(port=inference_server.port))


def test_cli_serves_and_exits_1_on_die() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "reliability.testing.inference", "--port", str(port)]
    process = subprocess.Popen([*command, "--pool", "green", "--image", "img@sha256:" + "a" * 64])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                assert httpx.get(f"{url}/health", timeout=1).json()["pool"] == "green"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the CLI stand-in did not start"
                time.sleep(0.05)
        httpx.post(f"{url}/_rig/mode", json={"mode": "die"}, timeout=5)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=5)
        assert process.wait(10) == 1
    finally:
        process.kill()
        process.wait(10)


# --- as a hosted API: TLS by the rig's CA, its name, its key --------------------------------

KEY = "sk-rig-hosted-key-0123456789"


@pytest.fixture
def hosted(inference_group: ServerGroup, tmp_path) -> tuple[InferenceHandle, ssl.SSLContext]:
    ca = tls.make_ca(tmp_path)
    spec = InferenceSpec(pool="hosted", tls=tls.issue(ca, "localhost"), api_key=KEY)
    return inference_group.start(spec), ssl.create_default_context(cafile=str(ca.cert_file))


def test_a_hosted_stand_in_answers_its_name_with_its_key_over_tls(hosted) -> None:
    api, trust = hosted
    answer = httpx.get(
        api.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}, verify=trust
    )
    assert api.url.startswith("https://localhost:")
    assert (answer.status_code, answer.headers["x-pool"]) == (200, "hosted")


def test_a_hosted_stand_in_refuses_what_a_hosted_api_refuses(hosted) -> None:
    api, trust = hosted
    url = api.url + "/v1/models"
    without_key = httpx.get(url, verify=trust)
    wrong_key = httpx.get(url, headers={"authorization": "Bearer sk-nope"}, verify=trust)
    other_host = httpx.get(
        url, headers={"authorization": f"Bearer {KEY}", "host": "x"}, verify=trust
    )

    assert without_key.status_code == 401
    assert without_key.json()["error"]["message"].startswith("You didn't provide an API key")
    assert (wrong_key.status_code, wrong_key.json()["error"]["code"]) == (401, "invalid_api_key")
    assert other_host.status_code == 421
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, headers={"authorization": f"Bearer {KEY}"})  # the system's CAs only
    assert api.stats()["requests"] == 0  # none of them reached the API


@pytest.mark.parametrize("name", [None, "api.other.example"])
def test_a_tls_client_without_the_stand_ins_name_fails_the_handshake(hosted, name) -> None:
    api, trust = hosted
    trust.check_hostname = False  # only the server's side of the handshake is under test
    with (
        socket.create_connection((api.host, api.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        trust.wrap_socket(raw, server_hostname=name).close()
