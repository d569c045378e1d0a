"""Every metric `reliability` exports: name, type, help, unit and labels.

Collectors, dashboards and alert rules import names from here; nothing else spells a
metric name, so a panel or rule can never query a series the daemon does not export.
Names follow Prometheus conventions: base units, `_total` on counters, `_ratio` for 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Kind = Literal["gauge", "counter", "histogram"]

PREFIX = "reliability_"

# Latency buckets for probes of LLM APIs: a one-token completion takes 50 ms on a warm
# local pool and tens of seconds on an overloaded hosted API.
API_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family. `name` is the full exported name (with `_total` for counters)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()

    @property
    def family(self) -> str:
        """Name of the family as prometheus_client wants it (counters without `_total`)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


def _m(name: str, kind: Kind, help: str, labels: tuple[str, ...] = (), **kw) -> Metric:
    return Metric(PREFIX + name, kind, help, labels, **kw)


# --- per collector and target: is it answering, and how long does it take -------------
TARGET_UP = _m(
    "target_up",
    "gauge",
    "1 if the target answered its last collection, else 0.",
    ("collector", "target"),
)
TARGET_LAST_SUCCESS = _m(
    "target_last_success_timestamp_seconds",
    "gauge",
    "Unix time of the target's last successful collection.",
    ("collector", "target"),
    unit="seconds",
)
TARGET_DURATION = _m(
    "target_collect_duration_seconds",
    "gauge",
    "Wall-clock seconds the target's last collection took.",
    ("collector", "target"),
    unit="seconds",
)
TARGET_FAILURES = _m(
    "target_failures_total",
    "counter",
    "Failed collections by `reason` (timeout, unreachable, host_key, auth, bad_output, ...).",
    ("collector", "target", "reason"),
)

# --- GPUs (NVML locally, nvidia-smi over SSH) -------------------------------------------
GPU = ("node", "gpu")
GPU_INFO = _m(
    "gpu_info",
    "gauge",
    "Identity of a GPU; always 1.",
    ("node", "gpu", "uuid", "model", "pci_bus_id"),
)
NODE_GPUS_EXPECTED = _m(
    "node_gpus_expected", "gauge", "GPUs the node is configured to have.", ("node",)
)
NODE_GPUS_VISIBLE = _m(
    "node_gpus_visible", "gauge", "GPUs the driver reports on the node.", ("node",)
)
NODE_GPUS_LOST = _m(
    "node_gpus_lost",
    "gauge",
    "GPUs lost on the node: reported lost by the driver, or missing against the expected count.",
    ("node",),
)
GPU_LOST = _m(
    "gpu_lost", "gauge", "1 if the driver reports this GPU lost (GPU_IS_LOST), else 0.", GPU
)
GPU_UTILIZATION = _m(
    "gpu_utilization_ratio",
    "gauge",
    "Fraction of the last sample period in which a kernel ran on the GPU.",
    GPU,
    unit="ratio",
)
GPU_MEMORY_UTILIZATION = _m(
    "gpu_memory_bandwidth_utilization_ratio",
    "gauge",
    "Fraction of the last sample period in which device memory was read or written.",
    GPU,
    unit="ratio",
)
GPU_MEMORY_USED = _m("gpu_memory_used_bytes", "gauge", "Device memory in use.", GPU, unit="bytes")
GPU_MEMORY_TOTAL = _m(
    "gpu_memory_total_bytes", "gauge", "Device memory installed.", GPU, unit="bytes"
)
GPU_TEMPERATURE = _m(
    "gpu_temperature_celsius", "gauge", "GPU core temperature.", GPU, unit="celsius"
)
GPU_SLOWDOWN_TEMPERATURE = _m(
    "gpu_slowdown_temperature_celsius",
    "gauge",
    "Temperature at which the GPU starts to slow its clocks.",
    GPU,
    unit="celsius",
)
GPU_POWER_DRAW = _m("gpu_power_draw_watts", "gauge", "Power drawn by the GPU.", GPU, unit="watts")
GPU_POWER_LIMIT = _m(
    "gpu_power_limit_watts", "gauge", "Power limit the GPU enforces.", GPU, unit="watts"
)
GPU_ENERGY = _m(
    "gpu_energy_joules_total",
    "counter",
    "Energy consumed by the GPU since the driver loaded.",
    GPU,
    unit="joules",
)
GPU_SM_CLOCK = _m("gpu_sm_clock_hertz", "gauge", "Current SM clock.", GPU, unit="hertz")
GPU_CLOCK_EVENT = _m(
    "gpu_clock_event_active",
    "gauge",
    "1 while a reason to lower clocks is active (thermal, power cap, hardware slowdown...).",
    ("node", "gpu", "reason"),
)
GPU_ECC_ERRORS = _m(
    "gpu_ecc_errors_total",
    "counter",
    "ECC errors: `type` corrected|uncorrected, `scope` volatile (since reset) or aggregate.",
    ("node", "gpu", "type", "scope"),
)
GPU_REMAPPED_ROWS = _m(
    "gpu_remapped_rows_total",
    "counter",
    "Memory rows remapped, by cause (`kind` correctable|uncorrectable).",
    ("node", "gpu", "kind"),
)
GPU_REMAP_PENDING = _m(
    "gpu_remapped_rows_pending",
    "gauge",
    "1 if a row remap waits for the next GPU reset.",
    GPU,
)
GPU_REMAP_FAILURE = _m(
    "gpu_remapped_rows_failure",
    "gauge",
    "1 if a row remap failed: the GPU needs service.",
    GPU,
)
GPU_RETIRED_PAGES_PENDING = _m(
    "gpu_retired_pages_pending",
    "gauge",
    "1 if a page retirement waits for the next GPU reset.",
    GPU,
)
GPU_PCIE_REPLAY = _m(
    "gpu_pcie_replay_total", "counter", "PCIe replays (link-level retransmissions).", GPU
)
GPU_XID_ERRORS = _m(
    "gpu_xid_errors_total",
    "counter",
    "XID errors reported by the driver, with NVIDIA's recommended `action`.",
    ("node", "gpu", "xid", "action"),
)
GPU_XID_LAST = _m(
    "gpu_xid_last_timestamp_seconds",
    "gauge",
    "Unix time of the last XID error of this code on this GPU.",
    ("node", "gpu", "xid"),
    unit="seconds",
)
NODE_KERNEL_LOG_READABLE = _m(
    "node_kernel_log_readable",
    "gauge",
    "1 if the node's kernel log (where XIDs are read over SSH) could be read at the last "
    "collection, 0 if not: XID detection is off on the node.",
    ("node",),
)

# --- nodes (over SSH) ------------------------------------------------------------------
NODE_UP = _m("node_up", "gauge", "1 if the node answered over SSH, else 0.", ("node",))
NODE_SSH_RTT = _m(
    "node_ssh_rtt_seconds",
    "gauge",
    "Round trip of a no-op command over the node's SSH session.",
    ("node",),
    unit="seconds",
)
NODE_LOAD = _m(
    "node_load_average", "gauge", "Load average over `period` 1m|5m|15m.", ("node", "period")
)
NODE_CPUS = _m("node_cpus", "gauge", "Online CPUs, to put the load average in scale.", ("node",))
NODE_MEMORY_AVAILABLE = _m(
    "node_memory_available_bytes",
    "gauge",
    "Memory available for new work (MemAvailable).",
    ("node",),
    unit="bytes",
)
NODE_MEMORY_TOTAL = _m(
    "node_memory_total_bytes", "gauge", "Memory installed (MemTotal).", ("node",), unit="bytes"
)
NODE_PATH_FREE = _m(
    "node_path_free_bytes",
    "gauge",
    "Bytes free for unprivileged users on a watched path.",
    ("node", "path"),
    unit="bytes",
)
NODE_PATH_SIZE = _m(
    "node_path_size_bytes",
    "gauge",
    "Size of the filesystem holding a watched path.",
    ("node", "path"),
    unit="bytes",
)
NODE_CONTAINER_RUNNING = _m(
    "node_container_running",
    "gauge",
    "1 if the serving container runs; `state` is its container state.",
    ("node", "container", "state"),
)
NODE_CONTAINER_IMAGE = _m(
    "node_container_image_info",
    "gauge",
    "The image the serving container runs, pinned by digest (REF@sha256:...); always 1. "
    "What the daemon records as deployed, whoever deployed it.",
    ("node", "container", "image"),
)

# --- nodes (liveness probe: a TCP connect to each port, every second) ---------------------
# `signal` is the port probed: `ssh` (sshd) or `serving` (the engine port of the node's service).
NODE_LIVENESS_UP = _m(
    "node_liveness_up",
    "gauge",
    "1 if the last TCP connect to the node's `signal` port (ssh, serving) succeeded, else 0.",
    ("node", "signal"),
)
NODE_LIVENESS_SINCE = _m(
    "node_liveness_since_timestamp_seconds",
    "gauge",
    "Unix time at which the first connect of the port's current state (up or down) was sent.",
    ("node", "signal"),
    unit="seconds",
)

# --- API endpoints (hosted and self-hosted, OpenAI-compatible) ---------------------------
API_PROBES = _m(
    "api_probes_total",
    "counter",
    "Probe results by `result` class (ok, rate_limited, overloaded, server_error, "
    "client_error, timeout, connection_error, bad_response).",
    ("endpoint", "probe", "result"),
)
API_PROBE_DURATION = _m(
    "api_probe_duration_seconds",
    "histogram",
    "Wall-clock seconds a probe took.",
    ("endpoint", "probe"),
    unit="seconds",
    buckets=API_LATENCY_BUCKETS,
)
# Seconds every endpoint's error and busy ratios cover (dashboards, `status`); the daemon
# adds the window of each active error-ratio rule. The `window` label spells them as the
# config does (durations.format_duration: 1m, 5m, 15s, 1m30s).
API_RATIO_WINDOWS = (60.0, 300.0)
API_ERROR_RATIO = _m(
    "api_error_ratio",
    "gauge",
    "Fraction of probes over `window` (1m, 5m, and each rule's) that did not succeed.",
    ("endpoint", "window"),
    unit="ratio",
)
API_OVERLOAD_RATIO = _m(
    "api_overload_ratio",
    "gauge",
    "Fraction of probes over `window` answered 503/529 or 429: the provider is busy.",
    ("endpoint", "window"),
    unit="ratio",
)

# --- where each service's public traffic goes (collect/route.py) ------------------------
SERVICE_ROUTE = _m(
    "service_route",
    "gauge",
    "1 for the side the service's route file on its balancer sends public traffic to "
    "(`route`: hosted, local, or other: neither prepared variant), 0 for the others.",
    ("service", "route"),
)

# --- notifications (the Slack outbox and its dispatcher) --------------------------------
OUTBOX_PENDING = _m(
    "outbox_pending_rows",
    "gauge",
    "Notifications waiting in the outbox to be sent to Slack.",
)
OUTBOX_OLDEST_PENDING_AGE = _m(
    "outbox_oldest_pending_age_seconds",
    "gauge",
    "Age of the oldest notification waiting in the outbox; 0 when none waits.",
    unit="seconds",
)
OUTBOX_ROWS = _m(
    "outbox_rows_total",
    "counter",
    "Outbox rows this process finished, by `status` (sent, failed, skipped).",
    ("status",),
)
SLACK_CALL_FAILURES = _m(
    "slack_call_failures_total",
    "counter",
    "Failed Slack calls by `reason` (rate_limited, transient, permanent).",
    ("reason",),
)
NOTIFIER_HEALTHY = _m(
    "notifier_healthy",
    "gauge",
    "1 if the notifier can deliver pages, 0 while a permanent failure (a refused token, an "
    "archived channel) holds them back in the outbox.",
    ("notifier",),
)
NOTIFIER_PERMANENT_FAILURE = _m(
    "notifier_permanent_failure_timestamp_seconds",
    "gauge",
    "Unix time since which a permanent failure holds the notifier's pages back, by "
    "`destination` (empty: the credentials, so every destination) and `reason` (its error "
    "code); absent when none holds.",
    ("notifier", "destination", "reason"),
    unit="seconds",
)

# --- incidents and runbook runs, as the database records them (collect/records.py) --------
# From an acknowledgement within the first minute to an incident left for a day, in minutes.
INCIDENT_DURATION_BUCKETS = tuple(
    60.0 * minutes for minutes in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 240, 1440)
)
INCIDENTS_OPEN = _m(
    "incidents_open",
    "gauge",
    "Incidents not yet resolved, by severity and `status` (open|acknowledged).",
    ("severity", "status"),
)
INCIDENT_TIME_TO_ACKNOWLEDGE = _m(
    "incident_time_to_acknowledge_seconds",
    "histogram",
    "Seconds from each page (an incident opened, reopened, or its acknowledgement expired) "
    "to its acknowledgement, over every acknowledgement on record; `severity` as the "
    "incident opened or reopened.",
    ("severity",),
    unit="seconds",
    buckets=INCIDENT_DURATION_BUCKETS,
)
INCIDENT_TIME_TO_RESOLVE = _m(
    "incident_time_to_resolve_seconds",
    "histogram",
    "Seconds from an incident opening (or reopening) to its resolve, over every resolve on "
    "record; `severity` as the incident opened or reopened.",
    ("severity",),
    unit="seconds",
    buckets=INCIDENT_DURATION_BUCKETS,
)
RUNBOOK_RUNS = _m(
    "runbook_runs_total",
    "counter",
    "Runbook runs that ended, by final `status` (succeeded, failed, aborted, undone), over "
    "every run on record.",
    ("runbook", "status"),
)
RUNBOOK_RUNS_UNFINISHED = _m(
    "runbook_runs_unfinished",
    "gauge",
    "Runbook runs not ended, by `status`: running, or interrupted and undo_failed (waiting "
    "for `runbook resume` or `runbook undo`).",
    ("runbook", "status"),
)

# --- the inventory, from the config (collect/inventory.py) -------------------------------
NODE_INFO = _m(
    "node_info",
    "gauge",
    "A configured node's pool and role; always 1. Join on `node` to add up GPUs by pool.",
    ("node", "pool", "role"),
)
ENDPOINT_INFO = _m(
    "endpoint_info",
    "gauge",
    "A configured endpoint's `role` (hosted|local) and service; always 1.",
    ("endpoint", "role", "service"),
)

# --- the daemons themselves: membership in the database (reliability/cluster/) ------------
CLUSTER_MEMBERS = _m(
    "cluster_members",
    "gauge",
    "Live daemons (members with a current heartbeat) as this daemon sees them in the database.",
)
CLUSTER_LEADER = _m(
    "cluster_leader",
    "gauge",
    "1 on the daemon holding the leader lease (it runs the singletons), 0 on the others.",
)
DATABASE_UP = _m(
    "database_up",
    "gauge",
    "1 if this daemon's last database heartbeat succeeded, else 0.",
)

ALL: tuple[Metric, ...] = tuple(v for v in globals().copy().values() if isinstance(v, Metric))
BY_NAME: dict[str, Metric] = {m.name: m for m in ALL}


class XidAction(StrEnum):
    """What NVIDIA recommends after an XID, from least to most disruptive."""

    NONE = "none"
    RESTART_APP = "restart_app"
    RESET_GPU = "reset_gpu"
    REBOOT_NODE = "reboot_node"
    INVESTIGATE = "investigate"


@dataclass(frozen=True, slots=True)
class Xid:
    code: int
    meaning: str
    action: XidAction
    critical: bool


# NVIDIA's XID catalogue, reduced to what an on-call engineer must do about each code.
XIDS: dict[int, Xid] = {
    x.code: x
    for x in (
        Xid(13, "Graphics engine exception", XidAction.RESTART_APP, False),
        Xid(31, "GPU memory page fault", XidAction.RESTART_APP, False),
        Xid(43, "GPU stopped processing", XidAction.RESTART_APP, False),
        Xid(45, "Preemptive cleanup after earlier errors", XidAction.NONE, False),
        Xid(48, "Double-bit ECC error", XidAction.RESET_GPU, True),
        Xid(61, "Internal micro-controller breakpoint", XidAction.RESET_GPU, True),
        Xid(62, "Internal micro-controller halt", XidAction.RESET_GPU, True),
        Xid(63, "ECC page retirement or row remap recorded", XidAction.NONE, False),
        Xid(64, "ECC page retirement or row remap failed", XidAction.RESET_GPU, True),
        Xid(74, "NVLink error", XidAction.RESET_GPU, True),
        Xid(79, "GPU has fallen off the bus", XidAction.REBOOT_NODE, True),
        Xid(92, "High single-bit ECC error rate", XidAction.NONE, False),
        Xid(94, "Contained ECC error", XidAction.RESTART_APP, True),
        Xid(95, "Uncontained ECC error", XidAction.RESET_GPU, True),
        Xid(119, "GSP RPC timeout", XidAction.RESET_GPU, True),
        Xid(120, "GSP error", XidAction.RESET_GPU, True),
    )
}


def xid_info(code: int) -> Xid:
    """The catalogue entry for an XID code; a code we do not know asks a human to look."""
    return XIDS.get(code) or Xid(code, f"XID {code}", XidAction.INVESTIGATE, False)


# =========================================================================================
# External: serving engines' own metrics
# =========================================================================================
# Not exported by the daemon, ever: these are what vLLM, SGLang, TGI and Triton serve on
# their own /metrics, spelled as the engines spell them (their names break our conventions,
# e.g. `vllm:` prefixes and `_total`-less counters). They are here so that a dashboard's query
# of them is checked like any other (dashboards/build.py), and so that `pool_compare` reads
# a canary's real traffic from them by name. `EngineMetric` is not a `Metric`:
# it is not in `ALL`, no `Sample` can carry it and the snapshot never renders it.
# Teams scrape their engines with the labels in `ENGINE_TARGET_LABELS` added by Prometheus.
# The rig's inference stand-in serves them from the traffic it answers (testing/inference.py).

Engine = Literal["vllm", "sglang", "tgi", "triton"]
ENGINES: tuple[Engine, ...] = ("vllm", "sglang", "tgi", "triton")
# Set per scrape target (`static_configs[].labels`): the pool the server belongs to.
ENGINE_TARGET_LABELS = ("pool",)


@dataclass(frozen=True, slots=True)
class EngineMetric:
    """One metric family a serving engine exports; `name` is exactly as it appears in the
    engine's exposition (histograms add `_bucket`, `_sum`, `_count`). `buckets` are what the
    rig's stand-in uses: vLLM's defaults, a similar spread for the others (no query depends
    on them)."""

    engine: Engine
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()


_VLLM = ("model_name", "engine")
# vllm/v1/metrics/loggers.py (PrometheusStatLogger)
VLLM_RUNNING = EngineMetric(
    "vllm", "vllm:num_requests_running", "gauge", "Requests in model execution batches.", _VLLM
)
VLLM_WAITING = EngineMetric(
    "vllm", "vllm:num_requests_waiting", "gauge", "Requests waiting to be processed.", _VLLM
)
VLLM_KV_CACHE_USAGE = EngineMetric(
    "vllm", "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage; 1 is full.", _VLLM, "ratio"
)
VLLM_GPU_CACHE_USAGE = EngineMetric(
    "vllm",
    "vllm:gpu_cache_usage_perc",
    "gauge",
    "The same KV-cache usage under its older name (deprecated for kv_cache_usage_perc, then "
    "removed); queried as a fallback for older servers.",
    _VLLM,
    "ratio",
)
VLLM_TTFT = EngineMetric(
    "vllm",
    "vllm:time_to_first_token_seconds",
    "histogram",
    "Time to first token.",
    _VLLM,
    "seconds",
    (
        *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0),
        *(7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
    ),
)
VLLM_E2E = EngineMetric(
    "vllm",
    "vllm:e2e_request_latency_seconds",
    "histogram",
    "End-to-end request latency.",
    _VLLM,
    "seconds",
    (
        *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0),
        *(120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
    ),
)
VLLM_REQUEST_SUCCESS = EngineMetric(
    "vllm",
    "vllm:request_success_total",
    "counter",
    "Requests finished, by `finished_reason` (stop, length, abort).",
    (*_VLLM, "finished_reason"),
)
# The OpenAI server's HTTP metrics, unprefixed: prometheus_fastapi_instrumentator's defaults
# (vllm/entrypoints/openai/api_server.py; /metrics, /health, /load, /ping, /version and
# /server_info are left out). Each answer by route template, method and status class
# (`2xx`, `5xx`: the codes grouped), counted when the response, a stream too, has ended.
# The only count of failed requests vLLM serves: its engine counts what it finished.
VLLM_HTTP_REQUESTS = EngineMetric(
    "vllm",
    "http_requests_total",
    "counter",
    "Total number of requests by method, status and handler.",
    ("method", "status", "handler"),
)
VLLM_HTTP_DURATION = EngineMetric(
    "vllm",
    "http_request_duration_seconds",
    "histogram",
    "Latency with only few buckets by handler. Made to be only used if aggregation by "
    "handler is important.",
    ("method", "handler"),
    "seconds",
    (0.1, 0.5, 1.0),
)

_SGLANG = ("model_name",)
# python/sglang/srt/metrics/collector.py (Scheduler- and TokenizerMetricsCollector)
SGLANG_RUNNING = EngineMetric(
    "sglang", "sglang:num_running_reqs", "gauge", "Running requests.", _SGLANG
)
SGLANG_QUEUE = EngineMetric(
    "sglang", "sglang:num_queue_reqs", "gauge", "Requests in the waiting queue.", _SGLANG
)
SGLANG_TOKEN_USAGE = EngineMetric(
    "sglang",
    "sglang:token_usage",
    "gauge",
    "Share of the KV-cache token pool in use.",
    _SGLANG,
    "ratio",
)
SGLANG_TTFT = EngineMetric(
    "sglang",
    "sglang:time_to_first_token_seconds",
    "histogram",
    "Time to first token.",
    _SGLANG,
    "seconds",
    (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 120.0),
)
SGLANG_E2E = EngineMetric(
    "sglang",
    "sglang:e2e_request_latency_seconds",
    "histogram",
    "End-to-end request latency.",
    _SGLANG,
    "seconds",
    (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0),
)
SGLANG_REQUESTS = EngineMetric(
    "sglang", "sglang:num_requests_total", "counter", "Requests processed.", _SGLANG
)
# python/sglang/srt/utils (add_prometheus_track_response_middleware, on with
# --enable-metrics like /metrics itself): each response by route, exact status code and
# method, counted when its headers go out.
SGLANG_HTTP_RESPONSES = EngineMetric(
    "sglang",
    "sglang:http_responses_total",
    "counter",
    "Total number of HTTP responses by endpoint and status code",
    ("endpoint", "status_code", "method"),
)

# router/src (text-generation-router, metrics crate): no labels; no time-to-first-token
# and no KV-cache usage metric exist.
TGI_QUEUE = EngineMetric("tgi", "tgi_queue_size", "gauge", "Requests in the queue.")
TGI_BATCH = EngineMetric(
    "tgi", "tgi_batch_current_size", "gauge", "Requests in the batch being generated."
)
TGI_REQUEST_DURATION = EngineMetric(
    "tgi",
    "tgi_request_duration",
    "histogram",
    "End-to-end request latency, in seconds.",
    unit="seconds",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0),
)
TGI_REQUEST_SUCCESS = EngineMetric(
    "tgi", "tgi_request_success", "counter", "Requests answered successfully."
)

_TRITON = ("model", "version")
# Triton core (docs/user_guide/metrics.md) and its TensorRT-LLM backend (nv_trt_llm_*).
TRITON_PENDING = EngineMetric(
    "triton",
    "nv_inference_pending_request_count",
    "gauge",
    "Requests received and not yet executing.",
    _TRITON,
)
TRITON_SUCCESS = EngineMetric(
    "triton", "nv_inference_request_success", "counter", "Successful requests.", _TRITON
)
TRITON_FAILURE = EngineMetric(
    "triton",
    "nv_inference_request_failure",
    "counter",
    "Failed requests (Triton adds a `reason` label in newer releases).",
    _TRITON,
)
TRITON_REQUEST_DURATION = EngineMetric(
    "triton",
    "nv_inference_request_duration_us",
    "counter",
    "Cumulative end-to-end request handling time, in microseconds.",
    _TRITON,
    "microseconds",
)
TRITON_FIRST_RESPONSE = EngineMetric(
    "triton",
    "nv_inference_first_response_histogram_ms",
    "histogram",
    "Time to the first response, in milliseconds: for a streaming (decoupled) LLM model the "
    "first streamed chunk. Off unless Triton runs with "
    "`--metrics-config histogram_latencies=true`.",
    _TRITON,
    "milliseconds",
    (1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0),
)
TRTLLM_REQUESTS = EngineMetric(
    "triton",
    "nv_trt_llm_request_metrics",
    "gauge",
    "TensorRT-LLM backend requests by `request_type` (active, max, scheduled, context, ...).",
    (*_TRITON, "request_type"),
)
TRTLLM_KV_CACHE_BLOCKS = EngineMetric(
    "triton",
    "nv_trt_llm_kv_cache_block_metrics",
    "gauge",
    "TensorRT-LLM backend KV-cache blocks by `kv_cache_block_type` (max, free, used, "
    "tokens_per, fraction: the share in use).",
    (*_TRITON, "kv_cache_block_type"),
)

ENGINE_METRICS: tuple[EngineMetric, ...] = tuple(
    v for v in globals().copy().values() if isinstance(v, EngineMetric)
)
ENGINE_BY_NAME: dict[str, EngineMetric] = {m.name: m for m in ENGINE_METRICS}
