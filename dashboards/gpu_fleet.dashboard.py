"""GPU fleet: is every GPU there, healthy, cool enough and busy, per node and GPU; does
each node answer."""

from reliability import catalog as c
from reliability.dashboards import links
from reliability.dashboards.panels import (
    Query,
    label_variable,
    new_dashboard,
    stat,
    steps,
    timeseries,
)
from reliability.detect import builtin

NODE = '{node=~"$node"}'
PER_GPU = "{{node}} / {{gpu}}"
# Any GPU lost is an incident (the gpu-lost rule fires above zero).
LOST = steps((1, "red"))
BUSY = steps((builtin.GPU_UTILIZATION_HIGH.value, "orange"))
NEEDS_RESET = builtin.GPU_XID_CRITICAL.match["action"]

overview = [
    stat(
        "GPUs lost",
        Query(f"sum by (node) ({c.NODE_GPUS_LOST.name}{NODE})", "{{node}}"),
        unit="none",
        description="Lost by the driver or missing against the node's expected count.",
        thresholds=LOST,
        width=8,
    ),
    stat(
        "Utilisation per node and GPU",
        Query(f"{c.GPU_UTILIZATION.name}{NODE}", PER_GPU),
        unit="percentunit",
        description="Orange above the gpu-utilization-high rule's threshold.",
        thresholds=BUSY,
        width=16,
    ),
]

load = [
    timeseries(
        "GPU utilisation",
        Query(f"{c.GPU_UTILIZATION.name}{NODE}", PER_GPU),
        unit="percentunit",
        thresholds=BUSY,
        bounds=(0, 1),
    ),
    timeseries(
        "Device memory used",
        Query(f"{c.GPU_MEMORY_USED.name}{NODE} / {c.GPU_MEMORY_TOTAL.name}{NODE}", PER_GPU),
        unit="percentunit",
        bounds=(0, 1),
    ),
    timeseries(
        "Power draw against the limit",
        Query(f"{c.GPU_POWER_DRAW.name}{NODE}", PER_GPU),
        Query(f"{c.GPU_POWER_LIMIT.name}{NODE}", PER_GPU + " limit"),
        unit="watt",
    ),
    timeseries("SM clock", Query(f"{c.GPU_SM_CLOCK.name}{NODE}", PER_GPU), unit="hertz"),
]

heat = [
    timeseries(
        "Temperature against the slowdown temperature",
        Query(f"{c.GPU_TEMPERATURE.name}{NODE}", PER_GPU),
        Query(f"{c.GPU_SLOWDOWN_TEMPERATURE.name}{NODE}", PER_GPU + " slowdown"),
        unit="celsius",
        description="Each GPU's own slowdown temperature, the gpu-temperature-slowdown rule's "
        "threshold: at or above it the GPU lowers its clocks.",
    ),
    timeseries(
        "Clock-event reasons active",
        Query(f"{c.GPU_CLOCK_EVENT.name}{NODE} == 1", PER_GPU + " {{reason}}"),
        unit="none",
        description="Why a GPU runs below its clocks: thermal, power cap, hardware slowdown.",
        bars=True,
    ),
]

errors = [
    timeseries(
        "XID errors and NVIDIA's action",
        Query(
            f"sum by (node, gpu, xid, action) "
            f"(increase({c.GPU_XID_ERRORS.name}{NODE}[$__rate_interval])) > 0",
            PER_GPU + " XID {{xid}}: {{action}}",
        ),
        unit="none",
        description=f"Actions {NEEDS_RESET} open a critical incident (gpu-xid-critical).",
        bars=True,
    ),
    stat(
        "XID detection off (kernel log unreadable)",
        Query(f"{c.NODE_KERNEL_LOG_READABLE.name}{NODE} == 0", "{{node}}"),
        unit="none",
        description=(
            "Nodes whose kernel log the collector cannot read over SSH: their XIDs go "
            "unseen (warning incident xid-detection-off, which names the fix)."
        ),
        thresholds=steps((0, "orange")),
    ),
    timeseries(
        "ECC errors (aggregate)",
        Query(
            f"sum by (node, gpu, type) "
            f'(increase({c.GPU_ECC_ERRORS.name}{{node=~"$node", scope="aggregate"}}'
            f"[$__rate_interval]))",
            PER_GPU + " {{type}}",
        ),
        unit="none",
        bars=True,
    ),
    timeseries(
        "Remapped rows",
        Query(f"{c.GPU_REMAPPED_ROWS.name}{NODE}", PER_GPU + " {{kind}}"),
        unit="none",
    ),
    stat(
        "Row remap pending a reset",
        Query(f"sum by (node) ({c.GPU_REMAP_PENDING.name}{NODE})", "{{node}}"),
        unit="none",
        thresholds=steps((1, "orange")),
    ),
    stat(
        "Row remap failed: GPU needs service",
        Query(f"sum by (node) ({c.GPU_REMAP_FAILURE.name}{NODE})", "{{node}}"),
        unit="none",
        thresholds=LOST,
    ),
    timeseries(
        "GPUs lost",
        Query(f"{c.NODE_GPUS_LOST.name}{NODE}", "{{node}} lost"),
        Query(f"{c.NODE_GPUS_EXPECTED.name}{NODE}", "{{node}} expected"),
        unit="none",
        thresholds=LOST,
    ),
]

reachability = [
    timeseries(
        "Ports answering the liveness probe",
        Query(f"{c.NODE_LIVENESS_UP.name}{NODE}", "{{node}} {{signal}}"),
        Query(f"{c.NODE_UP.name}{NODE}", "{{node}} SSH collection"),
        unit="none",
        bounds=(0, 1),
        description="1 while the node's sshd or serving port accepts a TCP connect (every "
        "second). node-down fires when every port of a node fails; sshd alone down is "
        "node-ssh-unreachable, the serving port alone serving-down.",
    ),
]

dashboard = new_dashboard(
    uid=links.GPU_FLEET,
    title="GPU fleet",
    description="GPU health per node and GPU, with the thresholds of the built-in rules.",
    tags=["gpu"],
    variables=[
        label_variable(c.NODE_INFO, "pool", title="Pool"),
        label_variable(c.NODE_INFO, "node", title="Node", within={"pool": "$pool"}),
    ],
    sections=[
        ("Overview", overview),
        ("Load", load),
        ("Heat and throttling", heat),
        ("Errors", errors),
        ("Reachability", reachability),
    ],
)
