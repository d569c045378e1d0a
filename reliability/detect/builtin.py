"""The built-in rules: one for every failure of CONTEXT.md, on by default.

`rules.builtin: false` drops them all, `rules.disabled` switches one off by name, and a
custom rule with a built-in's name replaces it (to tune a threshold, keep the name).
Runbook names are those of the shipped runbooks (runbooks/*.yaml).
"""

from __future__ import annotations

from reliability import catalog
from reliability.catalog import XidAction
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    GpuLostRule,
    RecoveredRule,
    Rules,
    RunbookSuggestion,
    TargetDownRule,
    ThresholdRule,
)
from reliability.detect.rules import AnyRule

NODE_FAILOVER = RunbookSuggestion(name="node-failover", params={"node": "{node}"})
UPSTREAM_FAILOVER = RunbookSuggestion(name="upstream-failover", params={"service": "{service}"})
UPSTREAM_SWITCH_BACK = RunbookSuggestion(
    name="upstream-switch-back", params={"service": "{service}"}
)
BLUE_GREEN = RunbookSuggestion(
    name="blue-green", params={"service": "{service}", "pool": "{standby_pool}"}
)

# XIDs after which the GPU is unusable until reset or reboot; the others leave it serving.
_NEEDS_RESET = f"{XidAction.RESET_GPU.value}|{XidAction.REBOOT_NODE.value}"

GPU_UTILIZATION_HIGH = ThresholdRule(
    type="threshold",
    name="gpu-utilization-high",
    metric=catalog.GPU_UTILIZATION.name,
    op=">",
    value=0.85,
    for_=300.0,
    resolve_after=120.0,
    group_by=["node"],
    title="{node}: GPU utilisation {value} above {threshold} on {count} of {total} GPUs",
    summary=(
        "GPUs {gpus} on {node} have been busier than {threshold} for over {for} (busiest "
        "{value}) since {since}: requests queue. Add capacity or move traffic to another pool."
    ),
)
GPU_TEMPERATURE_SLOWDOWN = ThresholdRule(
    type="threshold",
    name="gpu-temperature-slowdown",
    metric=catalog.GPU_TEMPERATURE.name,
    op=">=",
    value_metric=catalog.GPU_SLOWDOWN_TEMPERATURE.name,
    for_=60.0,
    resolve_after=300.0,
    group_by=["node"],
    title="{node}: GPU temperature {value} at slowdown {threshold}",
    summary=(
        "GPU {gpu} on {node} is at {value}, at or above its slowdown temperature {threshold}, "
        "since {since} ({count} of {total} GPUs hot): it lowers its clocks and requests slow "
        "down. Check cooling; move the load off the node if it stays hot."
    ),
)
GPU_XID_CRITICAL = CounterIncreaseRule(
    type="counter_increase",
    name="gpu-xid-critical",
    severity="critical",
    metric=catalog.GPU_XID_ERRORS.name,
    match={"action": _NEEDS_RESET},
    window=1800.0,
    group_by=["node"],
    title="{node}: XID {xid} on GPU {gpu} ({meaning}), action: {action}",
    summary=(
        "The driver on {node} reported XID {xid} ({meaning}) on GPU {gpu} at {since}; NVIDIA's "
        "recommended action is {action}. The GPU cannot serve until then: fail the node over."
    ),
    runbook=NODE_FAILOVER,
)
GPU_LOST = GpuLostRule(
    type="gpu_lost",
    name="gpu-lost",
    severity="critical",
    resolve_after=120.0,
    group_by=["node"],
    title="{node}: {value} of {expected} GPUs lost",
    summary=(
        "{node} has {visible} of {expected} GPUs working since {since}; lost: {gpus}. The "
        "serving container cannot use them until the node is rebooted: fail the node over."
    ),
    runbook=NODE_FAILOVER,
)
GPU_SOURCE_DOWN = TargetDownRule(
    type="target_down",
    name="gpu-source-down",
    collector="gpu",
    for_=60.0,
    group_by=["node"],
    title="{node}: GPU metrics unavailable",
    summary=(
        "No GPU reading from {node} since {since} (nvidia-smi or NVML failing while SSH works, "
        "or timing out). GPU incidents of the node are held, not resolved, until it answers."
    ),
)
NODE_DOWN = TargetDownRule(
    type="target_down",
    name="node-down",
    severity="critical",
    collector="node",
    for_=10.0,
    group_by=["node"],
    title="{node}: node down, not answering over SSH",
    summary=(
        "{node} has not answered over SSH since {since}. Its GPU, disk and probe incidents are "
        "suppressed while it is down. Fail it over to a standby node."
    ),
    runbook=NODE_FAILOVER,
    inhibits=[
        "gpu-utilization-high",
        "gpu-temperature-slowdown",
        "gpu-xid-critical",
        "gpu-lost",
        "gpu-source-down",
        "disk-almost-full",
        "local-pool-errors",
    ],
)
DISK_ALMOST_FULL = ThresholdRule(
    type="threshold",
    name="disk-almost-full",
    metric=catalog.NODE_PATH_FREE.name,
    per=catalog.NODE_PATH_SIZE.name,
    op="<",
    value=0.10,
    for_=120.0,
    resolve_after=300.0,
    group_by=["node"],
    title="{node}: disk {path} {value} free",
    summary=(
        "{path} on {node} has {part} free of {whole} ({value}, below {threshold}) since "
        "{since}. Image pulls and logs fail when it fills: prune old images and logs."
    ),
)
UPSTREAM_OVERLOADED = ErrorRatioRule(
    type="error_ratio",
    name="upstream-overloaded",
    severity="critical",
    role="hosted",
    overload_only=True,
    window="1m",
    above=0.2,
    for_=60.0,
    resolve_after=120.0,
    group_by=["endpoint"],
    title="{endpoint}: hosted API overloaded, {value} of probes busy (503/529/429)",
    summary=(
        "{value} of probes to {endpoint} over the last {window} were answered busy (503, 529 "
        "or 429), above {threshold}, since {since}. Shift its traffic to the local fleet."
    ),
    runbook=UPSTREAM_FAILOVER,
)
UPSTREAM_RECOVERED = RecoveredRule(
    type="recovered",
    name="upstream-recovered",
    severity="info",
    resolve_after=60.0,
    group_by=["service"],
    title="{service}: hosted API {endpoint} recovered; traffic can go back to it",
    summary=(
        "{service} serves from its own pool while {endpoint}'s completion probes have "
        "failed {value} over the last {window} (at most {threshold} allowed): the hosted "
        "API has recovered. Move the traffic back to it."
    ),
    runbook=UPSTREAM_SWITCH_BACK,
)
LOCAL_POOL_ERRORS = ErrorRatioRule(
    type="error_ratio",
    name="local-pool-errors",
    severity="critical",
    role="local",
    window="1m",
    above=0.2,
    for_=60.0,
    resolve_after=120.0,
    group_by=["endpoint"],
    title="{endpoint}: {value} of probes failing",
    summary=(
        "{value} of probes to {endpoint} failed over the last {window}, above {threshold}, "
        "since {since}. Switch the service to its other pool, or roll back a new image."
    ),
    runbook=BLUE_GREEN,
)

BUILTIN: tuple[AnyRule, ...] = (
    GPU_UTILIZATION_HIGH,
    GPU_TEMPERATURE_SLOWDOWN,
    GPU_XID_CRITICAL,
    GPU_LOST,
    GPU_SOURCE_DOWN,
    NODE_DOWN,
    DISK_ALMOST_FULL,
    UPSTREAM_OVERLOADED,
    UPSTREAM_RECOVERED,
    LOCAL_POOL_ERRORS,
)


def active_rules(rules: Rules) -> list[AnyRule]:
    """The rules to evaluate: built-ins (unless off), replaced by custom rules of the same
    name, plus the other custom rules, minus the disabled ones."""
    by_name: dict[str, AnyRule] = {r.name: r for r in BUILTIN} if rules.builtin else {}
    for rule in rules.custom:
        by_name[rule.name] = rule
    off = set(rules.disabled)
    return [rule for name, rule in by_name.items() if name not in off]
