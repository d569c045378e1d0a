"""What the inference stand-in serves on ``GET /metrics``: a serving engine's own metrics,
with values from the requests it answered.

One stand-in plays one engine (``InferenceSpec.engine``: vllm, sglang, tgi or triton) and
speaks that engine's names and labels, as declared in ``catalog.ENGINE_METRICS``, so the
Serving engines and Capacity dashboards can be checked against a real Prometheus scraping
real traffic. The numbers mean what the engine's mean:

* a chat completion is *waiting* from its arrival until its answer starts (the ``slow``
  mode's delay, a ``stall``), then *running* until its last byte is sent;
* a running request holds its prompt and completion tokens in a KV cache of
  ``kv_cache_tokens`` tokens (usage = held / capacity);
* time to first token is measured at the first content chunk of a stream (at the whole
  answer otherwise), end-to-end latency when the answer is complete; an answer that never
  completed (an error mode, a client gone mid-stream) counts as failed, not as latency.

Only chat completions count as inference requests. The HTTP metrics the engine's server
keeps count every answer of its routes as it does: vLLM's OpenAI server by route template,
method and status class (``5xx``), ``/health`` left out, once the response (a stream too)
has ended; SGLang's by route, exact status code and method, ``/health`` included (SGLang
counts when the headers go out; the stand-in, like vLLM, when the answer is over). A
request the stand-in never answered (``die``) is in neither, as with a crashed server.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from reliability import catalog
from reliability.catalog import EngineMetric

# vLLM creates its request counter for every finish reason at start.
VLLM_FINISH_REASONS = ("stop", "length", "abort")
# Routes vLLM's instrumentator leaves out of its HTTP metrics (of those the stand-in serves).
VLLM_UNINSTRUMENTED = frozenset({"/health"})
# TensorRT-LLM's KV cache is handed out in blocks of this many tokens.
TRTLLM_TOKENS_PER_BLOCK = 64
TRITON_VERSION = "1"


@dataclass
class Ticket:
    """One chat completion, from its arrival to its last byte."""

    id: int
    arrived: float
    held_tokens: int = 0
    started: bool = False
    first_token: bool = False
    finish_reason: str | None = None
    ended: bool = False


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative_state(self) -> tuple[list[tuple[float, int]], float]:
        """(cumulative count per upper bound, ending with +Inf), sum."""
        running = list(itertools.accumulate(self.counts))
        return list(zip((*self.bounds, math.inf), running, strict=True)), self.sum


# The histograms each engine keeps: time to first token, end-to-end latency (None: none).
_HISTOGRAMS: dict[str, tuple[EngineMetric | None, EngineMetric | None]] = {
    "vllm": (catalog.VLLM_TTFT, catalog.VLLM_E2E),
    "sglang": (catalog.SGLANG_TTFT, catalog.SGLANG_E2E),
    "tgi": (None, catalog.TGI_REQUEST_DURATION),
    "triton": (catalog.TRITON_FIRST_RESPONSE, None),
}


class ServingStats:
    """Thread-safe counts of one stand-in's chat completions, as `engine` keeps them."""

    def __init__(
        self,
        engine: catalog.Engine,
        *,
        model: str,
        kv_cache_tokens: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.model = model
        self.kv_cache_tokens = kv_cache_tokens
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: set[int] = set()
        self._running: dict[int, Ticket] = {}
        self._finished: Counter[str] = Counter()  # finish reason -> requests
        self._failed = 0
        self._e2e_total = 0.0
        self._http: Counter[tuple[str, ...]] = Counter()  # label values -> answers
        self._http_seconds: dict[tuple[str, ...], _Histogram] = {}  # vLLM's, by method, route
        ttft, e2e = _HISTOGRAMS[engine]
        self._ttft = (ttft, _Histogram(ttft.buckets)) if ttft else None
        self._e2e = (e2e, _Histogram(e2e.buckets)) if e2e else None

    # -- recording (from the request handlers) -------------------------------------------
    def arrive(self) -> Ticket:
        with self._lock:
            ticket = Ticket(next(self._ids), self._clock())
            self._waiting.add(ticket.id)
            return ticket

    def start(self, ticket: Ticket, *, tokens: int) -> None:
        """The answer is being generated: the request runs and holds `tokens` of KV cache."""
        with self._lock:
            if ticket.ended or ticket.started:
                return
            ticket.started, ticket.held_tokens = True, tokens
            self._waiting.discard(ticket.id)
            self._running[ticket.id] = ticket

    def first_token(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.first_token or ticket.ended:
                return
            ticket.first_token = True
            _observe(self._ttft, self._clock() - ticket.arrived)

    def complete(self, ticket: Ticket, finish_reason: str) -> None:
        """The whole answer was produced (it may still be on its way to the client)."""
        with self._lock:
            ticket.finish_reason = finish_reason

    def end(self, ticket: Ticket) -> None:
        """The request is over, answered or not; idempotent."""
        with self._lock:
            if ticket.ended:
                return
            ticket.ended = True
            self._waiting.discard(ticket.id)
            self._running.pop(ticket.id, None)
            if ticket.finish_reason is None:
                self._failed += 1
                return
            seconds = self._clock() - ticket.arrived
            self._finished[ticket.finish_reason] += 1
            self._e2e_total += seconds
            _observe(self._e2e, seconds)

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """An HTTP answer of `route` is over: its server's HTTP metrics count it."""
        with self._lock:
            if self.engine == "vllm" and route not in VLLM_UNINSTRUMENTED:
                self._http[(method, f"{str(status)[0]}xx", route)] += 1
                bounds = catalog.VLLM_HTTP_DURATION.buckets
                self._http_seconds.setdefault((method, route), _Histogram(bounds)).observe(seconds)
            elif self.engine == "sglang":
                self._http[(route, str(status), method)] += 1

    # -- reading -------------------------------------------------------------------------
    def render(self) -> str:
        """The Prometheus text exposition (0.0.4) the engine would serve now."""
        with self._lock:
            state = _State(
                waiting=len(self._waiting),
                running=len(self._running),
                held_tokens=sum(t.held_tokens for t in self._running.values()),
                kv_cache_tokens=self.kv_cache_tokens,
                finished=dict(self._finished),
                failed=self._failed,
                e2e_total=self._e2e_total,
                histograms={
                    m: h.cumulative_state() for m, h in filter(None, (self._ttft, self._e2e))
                },
                http=dict(sorted(self._http.items())),
                http_seconds={
                    k: h.cumulative_state() for k, h in sorted(self._http_seconds.items())
                },
            )
        out = _Exposition()
        _RENDERERS[self.engine](out, state, self.model)
        return out.text()


def _observe(pair: tuple[EngineMetric, _Histogram] | None, seconds: float) -> None:
    if pair is not None:
        metric, histogram = pair
        # Triton counts milliseconds.
        histogram.observe(seconds * 1000.0 if metric.unit == "milliseconds" else seconds)


@dataclass(frozen=True)
class _State:
    waiting: int
    running: int
    held_tokens: int
    kv_cache_tokens: int
    finished: dict[str, int]
    failed: int
    e2e_total: float
    histograms: dict[EngineMetric, tuple[list[tuple[float, int]], float]]
    http: dict[tuple[str, ...], int]
    http_seconds: dict[tuple[str, ...], tuple[list[tuple[float, int]], float]]

    @property
    def usage(self) -> float:
        return min(1.0, self.held_tokens / self.kv_cache_tokens) if self.kv_cache_tokens else 0.0

    @property
    def succeeded(self) -> int:
        return sum(self.finished.values())


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, metric: EngineMetric, samples: Iterable[tuple[Sequence[str], float]]):
        """A gauge or counter: (label values in `metric.labels` order, value) per series."""
        self._header(metric)
        for values, value in samples:
            self._lines.append(f"{metric.name}{_labels(metric.labels, values)} {_num(value)}")

    def histogram(
        self,
        metric: EngineMetric,
        series: Iterable[tuple[Sequence[str], tuple[list[tuple[float, int]], float]]],
    ) -> None:
        """(label values, (cumulative buckets, sum)) per series."""
        self._header(metric)
        for values, (buckets, total) in series:
            base = _labels(metric.labels, values)
            for le, count in buckets:
                labels = _labels((*metric.labels, "le"), (*values, _num(le)))
                self._lines.append(f"{metric.name}_bucket{labels} {count}")
            self._lines.append(f"{metric.name}_sum{base} {_num(total)}")
            self._lines.append(f"{metric.name}_count{base} {buckets[-1][1]}")

    def _header(self, metric: EngineMetric) -> None:
        self._lines.append(f"# HELP {metric.name} {metric.help}")
        self._lines.append(f"# TYPE {metric.name} {metric.kind}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    escaped = (v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") for v in values)
    pairs = [f'{n}="{v}"' for n, v in zip(names, escaped, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _num(value: float) -> str:
    return floatToGoString(value)


def _vllm(out: _Exposition, s: _State, model: str) -> None:
    ids = (model, "0")
    out.family(catalog.VLLM_RUNNING, [(ids, s.running)])
    out.family(catalog.VLLM_WAITING, [(ids, s.waiting)])
    out.family(catalog.VLLM_KV_CACHE_USAGE, [(ids, s.usage)])
    out.histogram(catalog.VLLM_TTFT, [(ids, s.histograms[catalog.VLLM_TTFT])])
    out.histogram(catalog.VLLM_E2E, [(ids, s.histograms[catalog.VLLM_E2E])])
    reasons = sorted({*VLLM_FINISH_REASONS, *s.finished})
    out.family(catalog.VLLM_REQUEST_SUCCESS, [((*ids, r), s.finished.get(r, 0)) for r in reasons])
    out.family(catalog.VLLM_HTTP_REQUESTS, s.http.items())
    out.histogram(catalog.VLLM_HTTP_DURATION, s.http_seconds.items())


def _sglang(out: _Exposition, s: _State, model: str) -> None:
    ids = (model,)
    out.family(catalog.SGLANG_RUNNING, [(ids, s.running)])
    out.family(catalog.SGLANG_QUEUE, [(ids, s.waiting)])
    out.family(catalog.SGLANG_TOKEN_USAGE, [(ids, s.usage)])
    out.histogram(catalog.SGLANG_TTFT, [(ids, s.histograms[catalog.SGLANG_TTFT])])
    out.histogram(catalog.SGLANG_E2E, [(ids, s.histograms[catalog.SGLANG_E2E])])
    out.family(catalog.SGLANG_REQUESTS, [(ids, s.succeeded)])
    out.family(catalog.SGLANG_HTTP_RESPONSES, s.http.items())


def _tgi(out: _Exposition, s: _State, model: str) -> None:
    out.family(catalog.TGI_QUEUE, [((), s.waiting)])
    out.family(catalog.TGI_BATCH, [((), s.running)])
    out.histogram(catalog.TGI_REQUEST_DURATION, [((), s.histograms[catalog.TGI_REQUEST_DURATION])])
    out.family(catalog.TGI_REQUEST_SUCCESS, [((), s.succeeded)])


def _triton(out: _Exposition, s: _State, model: str) -> None:
    ids = (model, TRITON_VERSION)
    out.family(catalog.TRITON_PENDING, [(ids, s.waiting)])
    out.family(catalog.TRITON_SUCCESS, [(ids, s.succeeded)])
    out.family(catalog.TRITON_FAILURE, [(ids, s.failed)])
    out.family(catalog.TRITON_REQUEST_DURATION, [(ids, round(s.e2e_total * 1e6))])
    out.histogram(
        catalog.TRITON_FIRST_RESPONSE, [(ids, s.histograms[catalog.TRITON_FIRST_RESPONSE])]
    )
    blocks = s.kv_cache_tokens // TRTLLM_TOKENS_PER_BLOCK
    used = min(blocks, math.ceil(s.held_tokens / TRTLLM_TOKENS_PER_BLOCK))
    out.family(
        catalog.TRTLLM_REQUESTS,
        [
            ((*ids, "active"), s.running + s.waiting),
            ((*ids, "scheduled"), s.running),
            ((*ids, "waiting"), s.waiting),
        ],
    )
    out.family(
        catalog.TRTLLM_KV_CACHE_BLOCKS,
        [
            ((*ids, "max"), blocks),
            ((*ids, "free"), blocks - used),
            ((*ids, "used"), used),
            ((*ids, "tokens_per"), TRTLLM_TOKENS_PER_BLOCK),
            ((*ids, "fraction"), used / blocks if blocks else 0.0),
        ],
    )


_RENDERERS: dict[str, Callable[[_Exposition, _State, str], None]] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "tgi": _tgi,
    "triton": _triton,
}
assert set(_RENDERERS) == set(catalog.ENGINES)
