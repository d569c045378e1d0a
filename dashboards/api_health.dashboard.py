"""API health: are the LLM endpoints answering, how often do they fail, and how fast."""

from reliability import catalog as c
from reliability.dashboards import links
from reliability.dashboards.panels import Query, label_variable, new_dashboard, steps, timeseries
from reliability.detect import builtin
from reliability.durations import format_duration

ENDPOINT = '{endpoint=~"$endpoint"}'
ERRORS = builtin.LOCAL_POOL_ERRORS
OVERLOAD = builtin.UPSTREAM_OVERLOADED
# The 1m ratios: collected for every endpoint whatever the rules read (catalog).
MINUTE = format_duration(c.API_RATIO_WINDOWS[0])
BUCKETS = f"{c.API_PROBE_DURATION.name}_bucket"


def latency(quantile: float) -> Query:
    """The probe latency quantile per endpoint, from the histogram's buckets."""
    return Query(
        f"histogram_quantile({quantile}, sum by (endpoint, le) "
        f"(rate({BUCKETS}{ENDPOINT}[$__rate_interval])))",
        "{{endpoint}}",
    )


traffic = [
    timeseries(
        "Probes by result class",
        Query(
            f"sum by (result) (rate({c.API_PROBES.name}{ENDPOINT}[$__rate_interval]))",
            "{{result}}",
        ),
        unit="reqps",
        width=24,
    ),
    timeseries(
        f"Error ratio ({MINUTE})",
        Query(
            f'{c.API_ERROR_RATIO.name}{{endpoint=~"$endpoint", window="{MINUTE}"}}',
            "{{endpoint}}",
        ),
        unit="percentunit",
        description="Probes that did not succeed; a local pool above the line over the last "
        f"{format_duration(ERRORS.window)} opens an incident (local-pool-errors).",
        thresholds=steps((ERRORS.above, "red")),
        bounds=(0, 1),
    ),
    timeseries(
        f"Overload ratio ({MINUTE})",
        Query(
            f'{c.API_OVERLOAD_RATIO.name}{{endpoint=~"$endpoint", window="{MINUTE}"}}',
            "{{endpoint}}",
        ),
        unit="percentunit",
        description="Probes answered 503/529 or 429; a hosted API above the line over the "
        f"last {format_duration(OVERLOAD.window)} opens an incident (upstream-overloaded).",
        thresholds=steps((OVERLOAD.above, "red")),
        bounds=(0, 1),
    ),
]

latencies = [
    timeseries(f"Latency p{round(q * 100)}", latency(q), unit="s", width=8)
    for q in (0.5, 0.95, 0.99)
]

dashboard = new_dashboard(
    uid=links.API_HEALTH,
    title="API health",
    description="Probes of the hosted and self-hosted OpenAI-compatible endpoints.",
    tags=["api"],
    variables=[label_variable(c.API_PROBES, "endpoint", title="Endpoint")],
    sections=[("Results", traffic), ("Latency", latencies)],
)
