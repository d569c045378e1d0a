"""Serving engines: queue depth, running requests, KV-cache usage, time to first token and
end-to-end latency, from the engines' own metrics, for teams that scrape their vLLM,
SGLang, TGI or Triton servers.

Each panel holds one query per engine that reports the concern, under the engine's own
current metric names (catalog.ENGINE_METRICS); an engine you do not run shows nothing.
Give every engine scrape target a `pool` label (catalog.ENGINE_TARGET_LABELS):

    - job_name: engines
      static_configs:
        - targets: ["10.0.0.11:8000"]
          labels: {pool: blue}

What an engine does not export is said in the panel's description: TGI has no
time-to-first-token or KV-cache usage metric; Triton reports running requests and KV-cache
usage only through its TensorRT-LLM backend, and its first-response histogram only with
`--metrics-config histogram_latencies=true`.
"""

from reliability import catalog as c
from reliability.dashboards import links
from reliability.dashboards.panels import Query, label_variable, new_dashboard, timeseries

POOL = 'pool=~"$pool"'
RATE = "[$__rate_interval]"
QUANTILES = (0.5, 0.95)


def per_pool(name: str, metric: c.EngineMetric, matchers: str = "") -> Query:
    """The metric added up over a pool's servers."""
    selector = ", ".join(m for m in (POOL, matchers) if m)
    return Query(f"sum by (pool) ({metric.name}{{{selector}}})", f"{{{{pool}}}} {name}")


def per_server(name: str, expr: str) -> Query:
    """The highest value of each server (instance): a cache fills up per server."""
    return Query(f"max by (pool, instance) ({expr})", f"{{{{pool}}}} {{{{instance}}}} {name}")


def quantiles(name: str, metric: c.EngineMetric, *, scale: str = "") -> list[Query]:
    bucket = f"{metric.name}_bucket{{{POOL}}}"
    return [
        Query(
            f"histogram_quantile({q}, sum by (pool, le) (rate({bucket}{RATE}))){scale}",
            f"{{{{pool}}}} {name} p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


def rate(metric: c.EngineMetric) -> str:
    return f"sum by (pool) (rate({metric.name}{{{POOL}}}{RATE}))"


load = [
    timeseries(
        "Queue depth",
        per_pool("vLLM", c.VLLM_WAITING),
        per_pool("SGLang", c.SGLANG_QUEUE),
        per_pool("TGI", c.TGI_QUEUE),
        per_pool("Triton", c.TRITON_PENDING),
        unit="none",
        description="Requests accepted and waiting for a place in a batch. A queue that "
        "keeps growing means the pool is out of capacity.",
    ),
    timeseries(
        "Running requests",
        per_pool("vLLM", c.VLLM_RUNNING),
        per_pool("SGLang", c.SGLANG_RUNNING),
        per_pool("TGI", c.TGI_BATCH),
        per_pool("Triton", c.TRTLLM_REQUESTS, 'request_type="scheduled"'),
        unit="none",
        description="Requests in the batches being generated. Triton: TensorRT-LLM backend "
        "only (scheduled requests).",
    ),
    timeseries(
        "KV-cache usage per server",
        per_server(
            "vLLM",
            f"{c.VLLM_KV_CACHE_USAGE.name}{{{POOL}}} or {c.VLLM_GPU_CACHE_USAGE.name}{{{POOL}}}",
        ),
        per_server("SGLang", f"{c.SGLANG_TOKEN_USAGE.name}{{{POOL}}}"),
        per_server(
            "Triton",
            f'{c.TRTLLM_KV_CACHE_BLOCKS.name}{{{POOL}, kv_cache_block_type="fraction"}}',
        ),
        unit="percentunit",
        description="Share of the KV cache in use; near 1 the engine preempts or queues "
        "requests. vLLM before kv_cache_usage_perc named it gpu_cache_usage_perc; Triton: "
        "TensorRT-LLM backend only; TGI exports no such metric.",
        bounds=(0, 1),
        width=24,
    ),
]

latency = [
    timeseries(
        "Time to first token",
        *quantiles("vLLM", c.VLLM_TTFT),
        *quantiles("SGLang", c.SGLANG_TTFT),
        *quantiles("Triton", c.TRITON_FIRST_RESPONSE, scale=" / 1000"),
        unit="s",
        description="Triton: time to the first response (for a streaming model, its first "
        "chunk), with histogram_latencies on. TGI exports no time-to-first-token metric.",
    ),
    timeseries(
        "End-to-end latency",
        *quantiles("vLLM", c.VLLM_E2E),
        *quantiles("SGLang", c.SGLANG_E2E),
        *quantiles("TGI", c.TGI_REQUEST_DURATION),
        Query(
            f"{rate(c.TRITON_REQUEST_DURATION)} "
            f"/ ({rate(c.TRITON_SUCCESS)} + {rate(c.TRITON_FAILURE)}) / 1000000",
            "{{pool}} Triton mean",
        ),
        unit="s",
        description="Triton exports a cumulative time, not a histogram: its line is the mean.",
    ),
    timeseries(
        "Requests finished",
        Query(rate(c.VLLM_REQUEST_SUCCESS), "{{pool}} vLLM"),
        Query(rate(c.SGLANG_REQUESTS), "{{pool}} SGLang"),
        Query(rate(c.TGI_REQUEST_SUCCESS), "{{pool}} TGI"),
        Query(rate(c.TRITON_SUCCESS), "{{pool}} Triton"),
        unit="reqps",
        width=24,
    ),
]

dashboard = new_dashboard(
    uid=links.SERVING_ENGINES,
    title="Serving engines",
    description="vLLM, SGLang, TGI and Triton as they report themselves: queues, batches, "
    "KV cache and latency, per pool.",
    tags=["serving"],
    variables=[label_variable(c.NODE_INFO, "pool", title="Pool")],
    sections=[("Load", load), ("Latency and throughput", latency)],
)
