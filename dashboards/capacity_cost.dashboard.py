"""Capacity and cost: the energy the GPUs draw and what it costs, how busy each pool is and
how many requests it serves, and the requests sent to hosted APIs.

Energy is the measured power draw of every GPU integrated over time, by pool (the node's
pool in the config, `reliability_node_info`); its cost is that times `price_per_kwh`,
whose default is `dashboards.energy_price_per_kwh` in the config when the dashboard is
built. GPUs draw power only: the hosts, cooling and network are not in it.
"""

from reliability import catalog as c
from reliability.config import DashboardsConfig
from reliability.dashboards import links
from reliability.dashboards.panels import (
    Query,
    label_variable,
    new_dashboard,
    stat,
    steps,
    textbox_variable,
    timeseries,
)
from reliability.detect import builtin

POOL = 'pool=~"$pool"'
RATE = "[$__rate_interval]"
PRICE = "$price_per_kwh"
# Each GPU's power draw (W) with its node's pool attached.
POWER = f"({c.GPU_POWER_DRAW.name} * on (node) group_left (pool) {c.NODE_INFO.name}{{{POOL}}})"
# Watt-milliseconds in a kWh: the sum over the range at one sample per $__interval, times
# $__interval_ms, is the energy in W*ms.
WATT_MS_PER_KWH = 3_600_000_000
ENERGY_KWH = (
    f"sum(sum_over_time({POWER}[$__range:$__interval])) * $__interval_ms / {WATT_MS_PER_KWH}"
)
HOSTED = f'{c.ENDPOINT_INFO.name}{{role="hosted"}}'


def requests_per_pool(name: str, metric: c.EngineMetric) -> Query:
    return Query(f"sum by (pool) (rate({metric.name}{{{POOL}}}{RATE}))", f"{{{{pool}}}} {name}")


def energy(settings: DashboardsConfig) -> list:
    return [
        stat(
            "Energy over the time range",
            Query(ENERGY_KWH, "energy"),
            unit="kwatth",
            description="Every GPU's measured power draw, integrated over the dashboard's "
            "time range.",
            width=12,
        ),
        stat(
            "Energy cost over the time range",
            Query(f"{ENERGY_KWH} * {PRICE}", "cost"),
            unit="none",
            description=f"kWh times the price per kWh (variable price_per_kwh; the config "
            f"says {settings.energy_price_per_kwh}), in the price's currency.",
            width=12,
        ),
        timeseries(
            "Power draw by pool",
            Query(f"sum by (pool) ({POWER}) / 1000", "{{pool}}"),
            unit="kwatt",
        ),
        timeseries(
            "Energy cost per hour by pool",
            Query(f"sum by (pool) ({POWER}) / 1000 * {PRICE}", "{{pool}}"),
            unit="none",
            description="kW drawn now times the price per kWh: what an hour at this draw "
            "costs, in the price's currency.",
        ),
    ]


# Requests/s each pool's engines finished, whichever engine serves it.
SERVED = " or ".join(
    f"sum by (pool) (rate({m.name}{{{POOL}}}{RATE}))"
    for m in (c.VLLM_REQUEST_SUCCESS, c.SGLANG_REQUESTS, c.TGI_REQUEST_SUCCESS, c.TRITON_SUCCESS)
)


def cost_per_request(settings: DashboardsConfig) -> list:
    return [
        timeseries(
            "Electricity cost per 1,000 requests by pool",
            Query(
                f"sum by (pool) ({POWER}) / 1000 * {PRICE} / 3600 / ({SERVED}) * 1000",
                "{{pool}}",
            ),
            unit="none",
            description="What the pool's GPUs draw per second (kW x price per kWh / 3600) "
            "over the requests it finishes per second, times 1,000: the electricity in each "
            "thousand answers, in the price's currency. Compare it with the hosted API's "
            "price per 1,000 requests (`reliability cost report` prints both, with hardware "
            "and staff).",
        )
    ]


use = [
    timeseries(
        "GPU utilisation by pool",
        Query(
            f"avg by (pool) ({c.GPU_UTILIZATION.name} "
            f"* on (node) group_left (pool) {c.NODE_INFO.name}{{{POOL}}})",
            "{{pool}}",
        ),
        unit="percentunit",
        description="Average over the pool's GPUs. Above the line, the gpu-utilization-high "
        "rule's threshold, a pool has no room for a failover.",
        thresholds=steps((builtin.GPU_UTILIZATION_HIGH.value, "orange")),
        bounds=(0, 1),
    ),
    timeseries(
        "Requests per pool",
        requests_per_pool("vLLM", c.VLLM_REQUEST_SUCCESS),
        requests_per_pool("SGLang", c.SGLANG_REQUESTS),
        requests_per_pool("TGI", c.TGI_REQUEST_SUCCESS),
        requests_per_pool("Triton", c.TRITON_SUCCESS),
        unit="reqps",
        description="Requests the serving engines finished, as they count them (see the "
        "Serving engines dashboard for the `pool` label on their scrape targets).",
    ),
]

hosted = [
    timeseries(
        "Requests to hosted APIs",
        Query(
            f"sum by (endpoint, result) (rate({c.API_PROBES.name}{RATE}) "
            f"* on (endpoint) group_left () {HOSTED})",
            "{{endpoint}} {{result}}",
        ),
        unit="reqps",
        description="The daemon's probes of the endpoints configured with role hosted. "
        "Traffic your gateway sends to a hosted API when the local pools fail over is billed "
        "by the provider and counted by the gateway, not here.",
    ),
    stat(
        "Billed completion probes over the time range",
        Query(
            f"sum by (endpoint) (increase({c.API_PROBES.name}"
            f'{{probe="completion"}}[$__range]) * on (endpoint) group_left () {HOSTED})',
            "{{endpoint}}",
        ),
        unit="none",
        description="Each one-token completion probe of a hosted API is a billed request.",
    ),
]


def make_dashboard(settings: DashboardsConfig):
    return new_dashboard(
        uid=links.CAPACITY_COST,
        title="Capacity and cost",
        description="GPU energy and its cost by pool, pool use and requests, and the requests "
        "sent to hosted APIs.",
        tags=["capacity", "cost"],
        variables=[
            label_variable(c.NODE_INFO, "pool", title="Pool"),
            textbox_variable(
                "price_per_kwh", title="Price per kWh", value=str(settings.energy_price_per_kwh)
            ),
        ],
        sections=[
            ("Energy", energy(settings)),
            ("Cost of serving", cost_per_request(settings)),
            ("Use", use),
            ("Hosted APIs", hosted),
        ],
    )
