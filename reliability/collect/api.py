"""Probes of LLM API endpoints (hosted and self-hosted, OpenAI-compatible or plain HTTP).

Each `collect(endpoint)` sends the endpoint's probes under a wall-clock deadline, classes
each answer (ok, rate_limited, overloaded, server_error, client_error, timeout,
connection_error, bad_response) and returns cumulative counters, a latency histogram and
the share of failed and of busy answers over each ratio window (1m, 5m and those the
rules read; `window` label: the config spelling, `15s`, `1m`). A failed probe
raises `CollectError` carrying those same samples, so a failure shows as such, never as
the last good values.

The API key goes into the `Authorization` header and nowhere else: not into logs, errors,
labels or the spec's repr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import httpx

from reliability import catalog
from reliability.collect import base
from reliability.collect.base import CollectError, HistogramValue, Sample
from reliability.durations import format_duration

log = logging.getLogger("reliability.collect.api")

EndpointKind = Literal["openai", "http"]

MAX_BODY_BYTES = 1 << 20  # an answer to a probe is tiny; more is a broken or hostile server
# Bounds memory if collect() is called far more often than the daemon does (every 2 s at
# most, two probes each: an hour's window holds 3600); past it a window covers the newest
# entries only.
WINDOW_MAX_ENTRIES = 4096
_MIN_WAIT = 0.001  # a past deadline still gets a (near-)zero wait, so httpx raises its timeout
_PING = {"role": "user", "content": "ping"}


class ProbeResult(StrEnum):
    """How one probe ended; the `result` label of `api_probes_total`."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    BAD_RESPONSE = "bad_response"


BUSY = frozenset({ProbeResult.RATE_LIMITED, ProbeResult.OVERLOADED})
# Results that say the host is not answering at all: a second probe would only wait again.
UNREACHABLE = frozenset({ProbeResult.TIMEOUT, ProbeResult.CONNECTION_ERROR})


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint to probe.

    `kind` openai probes `GET /v1/models` (and the completion); http probes `GET
    {base_url}{health_path}`, where any 2xx is ok. `api_key` is resolved from the
    environment by the daemon and sent as a Bearer token; it is excluded from repr.
    `model` names the model of the completion probe. `completion_every` N > 0 sends the
    one-token completion on the first collect and every Nth after it (it costs tokens and
    GPU time, so it runs slower than the models probe); 0 never sends it. If the models
    probe finds the host unreachable, a due completion waits for the next collect.
    `timeout` bounds each probe's whole request, body included. `headers` are extra,
    non-secret request headers. `ca_file`: trust this CA bundle (PEM) for the endpoint's
    TLS instead of the system's (a hosted API behind a private CA); verification stays on.
    """

    name: str
    base_url: str
    kind: EndpointKind = "openai"
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    timeout: float = 10.0
    completion_every: int = 0
    health_path: str = "/health"
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    ca_file: str | None = None

    def __post_init__(self) -> None:
        # Messages name fields, never values: the key must not reach a log via a config error.
        if not self.name:
            raise ValueError("endpoint name is empty")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.name}: base_url must start with http(s)://")
        if self.kind not in ("openai", "http"):
            raise ValueError(f"endpoint {self.name}: kind must be openai or http")
        if self.timeout <= 0:
            raise ValueError(f"endpoint {self.name}: timeout must be > 0")
        if self.completion_every < 0:
            raise ValueError(f"endpoint {self.name}: completion_every must be >= 0")
        if self.kind == "openai" and self.completion_every and not self.model:
            raise ValueError(f"endpoint {self.name}: the completion probe needs a model")
        if not self.health_path.startswith("/"):
            raise ValueError(f"endpoint {self.name}: health_path must start with /")


@dataclass(frozen=True, slots=True)
class _Probe:
    label: str
    method: str
    url: str
    body: bytes | None
    # The top-level JSON key a 2xx answer must hold as a list (None: any body will do).
    expect: str | None
    headers: Mapping[str, str]


class _Outcome(Exception):
    """Ends a probe early with its class; internal to this module."""

    def __init__(self, result: ProbeResult) -> None:
        self.result = result


class _Window:
    """Results of the last `seconds`, with running counts so a ratio costs O(1)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.entries: deque[tuple[float, ProbeResult]] = deque()
        self.errors = 0
        self.busy = 0

    def add(self, at: float, result: ProbeResult) -> None:
        if len(self.entries) >= WINDOW_MAX_ENTRIES:
            self._drop()
        self.entries.append((at, result))
        self.errors += result is not ProbeResult.OK
        self.busy += result in BUSY

    def ratios(self, now: float) -> tuple[float, float]:
        """(error ratio, overload ratio) over (now - seconds, now]; 0 with no entries."""
        while self.entries and self.entries[0][0] <= now - self.seconds:
            self._drop()
        seen = len(self.entries) or 1
        return self.errors / seen, self.busy / seen

    def _drop(self) -> None:
        _, result = self.entries.popleft()
        self.errors -= result is not ProbeResult.OK
        self.busy -= result in BUSY


class _EndpointState:
    """Everything one endpoint accumulates; mutated only under `lock`."""

    def __init__(
        self,
        spec: EndpointSpec,
        probes: tuple[_Probe, ...],
        client: httpx.Client,
        windows: Sequence[float],
    ) -> None:
        self.lock = threading.Lock()
        self.spec = spec
        self.client = client
        self.probes = probes
        self.completion: _Probe | None = None
        self.collects = 0
        self.completion_pending = False
        self.counts = {(p.label, r): 0 for p in probes for r in ProbeResult}
        self.buckets = {p.label: [0] * (len(catalog.API_LATENCY_BUCKETS) + 1) for p in probes}
        self.sums = dict.fromkeys((p.label for p in probes), 0.0)
        self.last = dict.fromkeys((p.label for p in probes), ProbeResult.OK)
        self.windows = [(format_duration(seconds), _Window(seconds)) for seconds in windows]


def _default_client(tls: ssl.SSLContext) -> httpx.Client:
    # One endpoint's client. httpcore's pool scans every pooled connection (quadratically
    # in the idle ones) on each request and release: one pool shared by 200 endpoints
    # cost ~10 ms of CPU per probe. An endpoint's probes run one after the other, so it
    # rarely needs a second connection. Each probe sets its own timeouts.
    # identity: probe answers are small, and decompressing them only costs CPU.
    return httpx.Client(
        verify=tls,
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30.0),
        headers={"accept-encoding": "identity", "user-agent": "reliability-probe"},
        follow_redirects=False,
    )


class ApiProbeCollector:
    """Collector `api`: one target per endpoint; safe to call concurrently per endpoint.

    `client` is shared by every endpoint (pass one to control TLS or proxies; it is then
    not closed by `close()`); without it each endpoint gets a client of its own.
    `ratio_windows`: the seconds the error and busy ratios cover, each a sample with its
    `window` label. `clock` timestamps the windows only; deadlines and latencies use the
    real monotonic clock.
    """

    name = base.API

    def __init__(
        self,
        endpoints: Sequence[EndpointSpec],
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        ratio_windows: Sequence[float] = catalog.API_RATIO_WINDOWS,
    ) -> None:
        labels = [format_duration(w) for w in ratio_windows]
        if len(set(labels)) != len(labels) or any(w < 1 or w != int(w) for w in ratio_windows):
            raise ValueError(f"ratio windows must be distinct whole seconds: {ratio_windows}")
        self._windows = tuple(ratio_windows)
        self._own_client = client is None
        self._clock = clock
        self._states: dict[str, _EndpointState] = {}
        # Loading a CA bundle takes milliseconds and memory: once per bundle, not per endpoint.
        contexts: dict[str | None, ssl.SSLContext] = {}
        for spec in endpoints:
            if spec.name in self._states:
                raise ValueError(f"endpoint {spec.name} is configured twice")
            own = client
            if own is None:
                if spec.ca_file not in contexts:
                    contexts[spec.ca_file] = (
                        ssl.create_default_context(cafile=spec.ca_file)
                        if spec.ca_file
                        else httpx.create_ssl_context()
                    )
                own = _default_client(contexts[spec.ca_file])
            self._states[spec.name] = self._new_state(spec, own, self._windows)

    @staticmethod
    def _new_state(
        spec: EndpointSpec, client: httpx.Client, windows: Sequence[float]
    ) -> _EndpointState:
        base = spec.base_url.rstrip("/")
        headers = dict(spec.headers)
        if spec.api_key:
            headers["authorization"] = "Bearer " + spec.api_key
        if spec.kind == "http":
            probe = _Probe("health", "GET", base + spec.health_path, None, None, headers)
            return _EndpointState(spec, (probe,), client, windows)
        models = _Probe("models", "GET", base + "/v1/models", None, "data", headers)
        if not spec.completion_every:
            return _EndpointState(spec, (models,), client, windows)
        body = {"model": spec.model, "messages": [_PING], "max_tokens": 1, "stream": False}
        completion = _Probe(
            "completion",
            "POST",
            base + "/v1/chat/completions",
            json.dumps(body).encode(),
            "choices",
            headers | {"content-type": "application/json"},
        )
        state = _EndpointState(spec, (models, completion), client, windows)
        state.completion = completion
        return state

    def targets(self) -> Sequence[str]:
        return list(self._states)

    def close(self) -> None:
        """Close the HTTP clients this collector created."""
        if self._own_client:
            for state in self._states.values():
                state.client.close()

    def collect(self, target: str) -> Sequence[Sample]:
        """Probe `target` once; its samples, or `CollectError` (with them) if a probe failed.

        The error's `reason` is the first failed probe's result class.
        """
        state = self._states[target]
        with state.lock:
            due = state.completion is not None and (
                state.collects % state.spec.completion_every == 0 or state.completion_pending
            )
            state.collects += 1
        first = state.probes[0]
        results = [(first, *self._run(state, first))]
        if due and state.completion is not None:
            # Unreachable host: defer the completion to the next collect rather than wait
            # a second timeout here and hold a pool worker twice as long.
            deferred = results[0][1] in UNREACHABLE
            with state.lock:
                state.completion_pending = deferred
            if not deferred:
                results.append((state.completion, *self._run(state, state.completion)))
        samples = self._samples(state)
        failed = [(p, r, s) for p, r, s in results if r is not ProbeResult.OK]
        if failed:
            probe, result, status = failed[0]
            http = "" if status is None else f" (HTTP {status})"
            message = f"{target}: {probe.label} probe {result}{http}"
            raise CollectError(result.value, message, samples=samples)
        return samples

    def _run(self, state: _EndpointState, probe: _Probe) -> tuple[ProbeResult, int | None]:
        """Send one probe, record its result and latency, log a change of result."""
        started = time.monotonic()
        result, status = self._request(state.client, probe, started + state.spec.timeout)
        elapsed = time.monotonic() - started
        now = self._clock()
        with state.lock:
            state.counts[probe.label, result] += 1
            state.buckets[probe.label][bisect_left(catalog.API_LATENCY_BUCKETS, elapsed)] += 1
            state.sums[probe.label] += elapsed
            for _, window in state.windows:
                window.add(now, result)
            previous, state.last[probe.label] = state.last[probe.label], result
        # A change of result is news; the same result again is only worth a debug line.
        if result is previous:
            level = logging.DEBUG
        else:
            level = logging.INFO if result is ProbeResult.OK else logging.WARNING
        status_text = "-" if status is None else str(status)
        log.log(
            level,
            "endpoint %s probe %s: %s (status %s)",
            state.spec.name,
            probe.label,
            result,
            status_text,
        )
        return result, status

    def _request(
        self, client: httpx.Client, probe: _Probe, deadline: float
    ) -> tuple[ProbeResult, int | None]:
        """Class of one request that must finish, body included, by `deadline`."""
        retried = False
        while True:
            fresh: list[bool] = []
            timeouts, trace = _deadline_extensions(deadline, fresh)
            status: int | None = None
            try:
                with client.stream(
                    probe.method,
                    probe.url,
                    content=probe.body,
                    headers=probe.headers,
                    extensions={"timeout": timeouts, "trace": trace},
                ) as response:
                    status = response.status_code
                    return _classify(response, probe, deadline), status
            except _Outcome as outcome:
                return outcome.result, status
            except httpx.TimeoutException:
                return ProbeResult.TIMEOUT, status
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # A kept-alive connection the server closed as we reused it fails like
                # this; one retry on a new connection tells that race from a dead server.
                if not retried and status is None and not fresh and time.monotonic() < deadline:
                    retried = True
                    continue
                return ProbeResult.CONNECTION_ERROR, status
            except httpx.TransportError:
                return ProbeResult.CONNECTION_ERROR, status

    def _samples(self, state: _EndpointState) -> list[Sample]:
        """Counters, histograms and the windows' ratios of `state` (pruning its windows)."""
        name = state.spec.name
        now = self._clock()
        with state.lock:
            counts = list(state.counts.items())
            histograms = [(label, list(b), state.sums[label]) for label, b in state.buckets.items()]
            ratios = [(label, window.ratios(now)) for label, window in state.windows]
        samples = [
            Sample(catalog.API_PROBES, (name, label, result.value), float(n))
            for (label, result), n in counts
        ]
        bounds = (*catalog.API_LATENCY_BUCKETS, float("inf"))
        for label, per_bucket, total in histograms:
            cumulative, running = [], 0
            for bound, n in zip(bounds, per_bucket, strict=True):
                running += n
                cumulative.append((bound, running))
            value = HistogramValue(tuple(cumulative), running, total)
            samples.append(Sample(catalog.API_PROBE_DURATION, (name, label), value))
        for label, (errors, busy) in ratios:
            samples.append(Sample(catalog.API_ERROR_RATIO, (name, label), errors))
            samples.append(Sample(catalog.API_OVERLOAD_RATIO, (name, label), busy))
        return samples


def _deadline_extensions(
    deadline: float, fresh: list[bool]
) -> tuple[dict[str, float], Callable[[str, dict[str, Any]], None]]:
    """httpx `timeout` and `trace` request extensions that hold a request to `deadline`.

    httpx's timeouts apply per phase and per read, so a server trickling keep-alive bytes
    never trips them. httpcore reads the `timeout` dict as each phase starts, so the trace
    callback shrinks the remaining phases' waits to the time left. It also notes in `fresh`
    whether this request opened a new connection. Within the body httpcore keeps the wait
    it took as the body started, so `_read_body` checks the deadline per chunk; a server
    that trickles and then falls silent can overrun by at most that one wait.
    """
    budget = max(deadline - time.monotonic(), _MIN_WAIT)
    timeouts = {"connect": budget, "read": budget, "write": budget, "pool": budget}

    def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            fresh.append(True)
        if event.endswith(".started"):
            left = max(deadline - time.monotonic(), _MIN_WAIT)
            timeouts["read"] = timeouts["write"] = left

    return timeouts, trace


def _classify(response: httpx.Response, probe: _Probe, deadline: float) -> ProbeResult:
    """Result class of an answer; reads at most MAX_BODY_BYTES of it, until `deadline`."""
    status = response.status_code
    if status == 429:
        result = ProbeResult.RATE_LIMITED
    elif status in (503, 529):
        result = ProbeResult.OVERLOADED
    elif status >= 500:
        result = ProbeResult.SERVER_ERROR
    elif status >= 400:
        result = ProbeResult.CLIENT_ERROR
    elif not 200 <= status < 300:
        result = ProbeResult.BAD_RESPONSE
    else:
        body = _read_body(response, deadline)
        return ProbeResult.OK if _valid(body, probe.expect) else ProbeResult.BAD_RESPONSE
    # An error status says all we need; the body is read (bounded) only to keep the
    # connection reusable, and a stall there does not change the class.
    with contextlib.suppress(_Outcome, httpx.HTTPError):
        _read_body(response, deadline)
    return result


def _read_body(response: httpx.Response, deadline: float) -> bytes:
    """The body, or `_Outcome` timeout past `deadline` / bad_response over the size cap."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise _Outcome(ProbeResult.TIMEOUT)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Outcome(ProbeResult.BAD_RESPONSE)
        chunks.append(chunk)
    return b"".join(chunks)


def _valid(body: bytes, expect: str | None) -> bool:
    """Whether a 2xx body has the OpenAI shape: an object with `expect` a list."""
    if expect is None:
        return True
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and isinstance(document.get(expect), list)
