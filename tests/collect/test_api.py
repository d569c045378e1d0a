"""The API probe collector against the real inference stand-in on 127.0.0.1.

Windows are tested with a fake clock (no sleeping); deadlines with the real one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response

from reliability import catalog
from reliability.collect.api import ApiProbeCollector, EndpointSpec
from reliability.collect.base import CollectError, HistogramValue, Sample
from reliability.collect.snapshot import Snapshot
from reliability.testing import tls
from reliability.testing.inference import (
    DEFAULT_MODEL,
    Controls,
    InferenceSpec,
    create_app,
    listen,
    uvicorn_config,
)
from reliability.testing.inference_group import InferenceHandle, ServerGroup

SECRET = "sk-test-7f3a9c1e5b2d4680"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """ASGI middleware in front of the stand-in: records request headers, and can answer
    in its place (`answer = (status, body)`) for what the stand-in has no mode for."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers: list[dict[str, str]] = []
        self.answer: tuple[int, bytes] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            if self.answer is not None:
                status, body = self.answer
                await Response(body, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.fixture
def recorded() -> Iterator[tuple[Recorder, str]]:
    """A stand-in behind a `Recorder`, served by uvicorn in a thread; (recorder, url)."""
    controls = Controls()
    recorder = Recorder(create_app(InferenceSpec(), controls))
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(recorder))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield recorder, f"http://127.0.0.1:{sock.getsockname()[1]}"
    controls.stopping = True
    server.should_exit = True
    thread.join(10)


def spec(url: str, **kw: Any) -> EndpointSpec:
    kw.setdefault("timeout", 2.0)
    return EndpointSpec(name=kw.pop("name", "hosted"), base_url=url, model=DEFAULT_MODEL, **kw)


def collect(collector: ApiProbeCollector, target: str = "hosted") -> tuple[list[Sample], str]:
    """Samples of one collect and its outcome: "ok" or the CollectError's reason."""
    try:
        return list(collector.collect(target)), "ok"
    except CollectError as error:
        return list(error.samples), error.reason


def value(samples: list[Sample], metric: catalog.Metric, *labels: str) -> Any:
    matches = [s.value for s in samples if s.metric is metric and s.labels[1:] == labels]
    assert len(matches) == 1, (metric.name, labels)
    return matches[0]


def probes(samples: list[Sample], probe: str, result: str) -> float:
    return value(samples, catalog.API_PROBES, probe, result)


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_healthy_endpoint_counts_ok_and_latency(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, completion_every=1)])
    for n in (1, 2):
        samples, outcome = collect(collector)
        assert outcome == "ok"
        assert probes(samples, "models", "ok") == n
        assert probes(samples, "completion", "ok") == n
        assert probes(samples, "models", "overloaded") == 0
        histogram = value(samples, catalog.API_PROBE_DURATION, "models")
        assert isinstance(histogram, HistogramValue)
        assert histogram.count == n and histogram.buckets[-1] == (float("inf"), n)
        assert 0 < histogram.sum < 2
    for window in ("1m", "5m"):
        assert value(samples, catalog.API_ERROR_RATIO, window) == 0
        assert value(samples, catalog.API_OVERLOAD_RATIO, window) == 0
    collector.close()


def test_samples_render_as_valid_exposition(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, completion_every=1)])
    snapshot = Snapshot()
    snapshot.publish("api", "hosted", ok=True, duration=0.1, samples=collector.collect("hosted"))
    families = {f.name: f for f in text_string_to_metric_families(snapshot.exposition())}
    assert "reliability_api_probe_duration_seconds" in families
    assert "reliability_api_probes" in families  # the parser drops `_total`
    collector.close()


def test_overload_storm_raises_ratios_then_they_recover(inference_server: InferenceHandle) -> None:
    clock = FakeClock()
    collector = ApiProbeCollector([spec(inference_server.url)], clock=clock)
    for _ in range(12):  # one healthy minute at a 5 s interval
        assert collect(collector)[1] == "ok"
        clock.now += 5
    inference_server.set_mode("overloaded")
    ratios = []
    for _ in range(12):  # a one-minute 503 storm
        samples, outcome = collect(collector)
        assert outcome == "overloaded"
        ratios.append(value(samples, catalog.API_ERROR_RATIO, "1m"))
        clock.now += 5
    assert ratios == sorted(ratios) and ratios[-1] == 1.0
    assert value(samples, catalog.API_OVERLOAD_RATIO, "1m") == 1.0
    assert value(samples, catalog.API_ERROR_RATIO, "5m") == pytest.approx(12 / 24)
    assert probes(samples, "models", "overloaded") == 12

    inference_server.set_mode("ok")
    for _ in range(12):
        samples, outcome = collect(collector)
        clock.now += 5
    assert outcome == "ok"
    assert value(samples, catalog.API_ERROR_RATIO, "1m") == 0
    assert 0 < value(samples, catalog.API_OVERLOAD_RATIO, "5m") < 1  # storm still in 5m
    clock.now += 300
    samples, _ = collect(collector)
    for window in ("1m", "5m"):
        assert value(samples, catalog.API_ERROR_RATIO, window) == 0
        assert value(samples, catalog.API_OVERLOAD_RATIO, window) == 0
    assert probes(samples, "models", "overloaded") == 12  # counters never go back
    collector.close()


def test_window_holds_only_the_last_five_minutes(inference_server: InferenceHandle) -> None:
    clock = FakeClock()
    collector = ApiProbeCollector([spec(inference_server.url)], clock=clock)
    inference_server.set_mode("rate_limited")
    for _ in range(40):
        collect(collector)
        clock.now += 10
    inference_server.set_mode("ok")
    for _ in range(20):  # 200 s healthy: 5m window = 20 ok + 10 of the storm
        samples, _ = collect(collector)
        clock.now += 10
    assert value(samples, catalog.API_OVERLOAD_RATIO, "5m") == pytest.approx(10 / 30)
    collector.close()


def test_each_ratio_window_asked_for_is_labelled_as_the_config_spells_it(
    inference_server: InferenceHandle,
) -> None:
    """A rule reading the last 20s or 90s gets its own series beside 1m and 5m."""
    clock = FakeClock()
    windows = (20.0, 60.0, 90.0, 300.0)
    collector = ApiProbeCollector([spec(inference_server.url)], clock=clock, ratio_windows=windows)
    for _ in range(10):  # 100 s healthy
        collect(collector)
        clock.now += 10
    inference_server.set_mode("overloaded")
    for _ in range(3):  # then 30 s busy
        samples, _ = collect(collector)
        clock.now += 10
    got = {
        s.labels[1]: s.value
        for s in samples
        if s.metric is catalog.API_OVERLOAD_RATIO and s.labels[0] == "hosted"
    }
    # At the last collect the 20s window holds 2 busy results, 90s 3 of 9, 1m 3 of 6.
    assert got == {"20s": 1.0, "1m": 0.5, "1m30s": pytest.approx(3 / 9), "5m": 3 / 13}
    collector.close()


def test_ratio_windows_must_be_distinct_whole_seconds() -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        ApiProbeCollector([spec("http://127.0.0.1:1")], ratio_windows=(1.5, 2.0))


@pytest.mark.parametrize(
    ("mode", "result"),
    [("rate_limited", "rate_limited"), ("overloaded", "overloaded"), ("garbage", "bad_response")],
)
def test_failure_modes_are_classified(
    inference_server: InferenceHandle, mode: str, result: str
) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, completion_every=1)])
    inference_server.set_mode(mode, path="/v1/chat/completions")
    samples, outcome = collect(collector)
    assert outcome == result
    assert probes(samples, "models", "ok") == 1
    assert probes(samples, "completion", result) == 1
    assert value(samples, catalog.API_ERROR_RATIO, "1m") == 0.5
    overload = 0.5 if result in ("rate_limited", "overloaded") else 0.0
    assert value(samples, catalog.API_OVERLOAD_RATIO, "1m") == overload
    collector.close()


@pytest.mark.parametrize(
    ("answer", "result"),
    [
        ((500, b"boom"), "server_error"),
        ((529, b"{}"), "overloaded"),
        ((401, b"{}"), "client_error"),
        ((200, b'{"object": "list"}'), "bad_response"),
        ((200, b"[" * (2 << 20)), "bad_response"),
    ],
)
def test_status_and_shape_are_classified(
    recorded: tuple[Recorder, str], answer: tuple[int, bytes], result: str
) -> None:
    recorder, url = recorded
    recorder.answer = answer
    collector = ApiProbeCollector([spec(url)])
    assert collect(collector)[1] == result
    collector.close()


def test_unknown_model_is_a_client_error(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector(
        [EndpointSpec("hosted", inference_server.url, model="nope", completion_every=1)]
    )
    samples, outcome = collect(collector)
    assert outcome == "client_error"
    assert probes(samples, "completion", "client_error") == 1
    collector.close()


def test_refused_port_is_a_connection_error_and_defers_completion() -> None:
    collector = ApiProbeCollector([spec(refused_url(), completion_every=1)])
    samples, outcome = collect(collector)
    assert outcome == "connection_error"
    assert probes(samples, "models", "connection_error") == 1
    assert sum(probes(samples, "completion", r) for r in ("ok", "connection_error")) == 0
    assert value(samples, catalog.API_ERROR_RATIO, "1m") == 1.0
    assert value(samples, catalog.API_OVERLOAD_RATIO, "1m") == 0.0
    collector.close()


def test_dying_server_is_a_connection_error(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector([spec(inference_server.url)])
    assert collect(collector)[1] == "ok"
    inference_server.set_mode("die")
    assert collect(collector)[1] == "connection_error"
    assert collect(collector)[1] == "connection_error"  # and stays down: listener closed
    collector.close()


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions"])
def test_keepalive_stall_times_out_at_the_deadline(
    inference_server: InferenceHandle, path: str
) -> None:
    timeout = 0.6
    collector = ApiProbeCollector([spec(inference_server.url, timeout=timeout, completion_every=1)])
    inference_server.set_mode("stall", path=path, interval_s=0.05)
    probe = "models" if path == "/v1/models" else "completion"
    started = time.monotonic()
    samples, outcome = collect(collector)
    elapsed = time.monotonic() - started
    assert outcome == "timeout"
    assert probes(samples, probe, "timeout") == 1
    assert timeout <= elapsed < timeout + 0.4
    assert value(samples, catalog.API_PROBE_DURATION, probe).sum >= timeout
    collector.close()


def test_slow_answer_before_headers_times_out(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, timeout=0.3)])
    inference_server.set_mode("slow", delay_s=1.0)
    started = time.monotonic()
    assert collect(collector)[1] == "timeout"
    assert time.monotonic() - started < 0.6
    collector.close()


def test_completion_probe_runs_every_nth_collect(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, completion_every=3)])
    for _ in range(7):
        samples, outcome = collect(collector)
        assert outcome == "ok"
    assert probes(samples, "models", "ok") == 7
    assert probes(samples, "completion", "ok") == 3  # collects 1, 4 and 7
    by_path = inference_server.stats()["by_path"]
    assert by_path["/v1/chat/completions"] == 3 and by_path["/v1/models"] == 7
    collector.close()


def test_completion_waits_while_the_host_is_unreachable(
    inference_server: InferenceHandle,
) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, timeout=0.3, completion_every=3)])
    inference_server.set_mode("stall", path="/v1/models", interval_s=0.05)
    assert collect(collector)[1] == "timeout"
    assert "/v1/chat/completions" not in inference_server.stats()["by_path"]
    inference_server.set_mode("ok")
    samples, outcome = collect(collector)  # off schedule, but the deferred one is due
    assert outcome == "ok" and probes(samples, "completion", "ok") == 1
    collect(collector)  # the third collect: not due
    assert inference_server.stats()["by_path"]["/v1/chat/completions"] == 1
    collector.close()


def test_http_kind_probes_the_health_path(inference_server: InferenceHandle) -> None:
    collector = ApiProbeCollector([spec(inference_server.url, kind="http")])
    samples, outcome = collect(collector)
    assert outcome == "ok" and probes(samples, "health", "ok") == 1
    inference_server.set_mode("overloaded", path="/health")
    assert collect(collector)[1] == "overloaded"
    assert inference_server.stats()["by_path"] == {"/health": 2}
    collector.close()


def test_api_key_reaches_the_server_but_no_log_or_error(
    recorded: tuple[Recorder, str], caplog: pytest.LogCaptureFixture
) -> None:
    recorder, url = recorded
    endpoint = spec(url, api_key=SECRET, completion_every=1, headers={"x-team": "search"})
    collector = ApiProbeCollector([endpoint])
    caplog.set_level(logging.DEBUG)
    assert collect(collector)[1] == "ok"
    recorder.answer = (503, b"busy")
    with pytest.raises(CollectError) as failed:
        collector.collect("hosted")
    recorder.answer = None
    assert collect(collector)[1] == "ok"

    assert [h["authorization"] for h in recorder.headers] == [f"Bearer {SECRET}"] * 6
    assert all(h["x-team"] == "search" for h in recorder.headers)
    assert SECRET not in str(failed.value) and SECRET not in repr(endpoint)
    assert any(r.name == "reliability.collect.api" for r in caplog.records)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    assert SECRET not in caplog.text


def test_result_changes_are_logged_with_endpoint_and_status(
    inference_server: InferenceHandle, caplog: pytest.LogCaptureFixture
) -> None:
    collector = ApiProbeCollector([spec(inference_server.url)])
    caplog.set_level(logging.INFO, logger="reliability.collect.api")
    collect(collector)
    inference_server.set_mode("overloaded")
    collect(collector)
    collect(collector)
    inference_server.set_mode("ok")
    collect(collector)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "endpoint hosted probe models: overloaded (status 503)"),
        (logging.INFO, "endpoint hosted probe models: ok (status 200)"),
    ]
    collector.close()


def test_concurrent_collects_of_many_endpoints(inference_server: InferenceHandle) -> None:
    names = [f"ep-{i}" for i in range(40)]
    collector = ApiProbeCollector([spec(inference_server.url, name=n) for n in names])
    assert collector.targets() == names
    with ThreadPoolExecutor(16) as pool:
        for _ in range(3):
            outcomes = list(pool.map(lambda n: collect(collector, n)[1], names))
            assert outcomes == ["ok"] * len(names)
    samples = collect(collector, "ep-7")[0]
    assert probes(samples, "models", "ok") == 4
    collector.close()


def test_spec_rejects_bad_config_without_echoing_the_key() -> None:
    with pytest.raises(ValueError, match="needs a model") as error:
        EndpointSpec("x", "https://api.example", api_key=SECRET, completion_every=5)
    assert SECRET not in str(error.value)
    with pytest.raises(ValueError, match="base_url"):
        EndpointSpec("x", "api.example")
    with pytest.raises(ValueError, match="twice"):
        ApiProbeCollector([EndpointSpec("x", "http://a"), EndpointSpec("x", "http://b")])


def test_a_hosted_api_behind_a_private_ca_is_probed_with_its_ca_file_and_refused_without(
    inference_group: ServerGroup, tmp_path: Path
) -> None:
    ca = tls.make_ca(tmp_path)
    key = "sk-probe-key-0123456789"
    api = inference_group.start(
        InferenceSpec(pool="hosted", tls=tls.issue(ca, "localhost"), api_key=key)
    )
    trusted = ApiProbeCollector(
        [spec(api.url, api_key=key, completion_every=1, ca_file=str(ca.cert_file))]
    )
    untrusted = ApiProbeCollector([spec(api.url, api_key=key, completion_every=1)])
    try:
        samples, outcome = collect(trusted)
        assert outcome == "ok"
        assert value(samples, catalog.API_PROBES, "completion", "ok") == 1
        _, refused = collect(untrusted)
        assert refused == "connection_error"  # verification stays on: never sent
    finally:
        trusted.close()
        untrusted.close()
