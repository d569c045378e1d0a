"""The built-in rules: one for every failure of CONTEXT.md, on by default.

`rules.builtin: false` drops them all, `rules.disabled` switches one off by name,
`rules.overrides` changes some fields of one (`upstream-overloaded: {above: 0.3}`), and a
custom rule with a built-in's name replaces it whole. Runbook names are those of the
shipped runbooks (runbooks/*.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reliability import catalog
from reliability.catalog import XidAction
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    GpuLostRule,
    ReachabilityRule,
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
CONTAINER_RESTART = RunbookSuggestion(name="container-restart", params={"node": "{node}"})
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
XID_DETECTION_OFF = ThresholdRule(
    type="threshold",
    name="xid-detection-off",
    metric=catalog.NODE_KERNEL_LOG_READABLE.name,
    op="<",
    value=1.0,
    for_=60.0,
    resolve_after=60.0,
    group_by=["node"],
    title="XID detection off on {node}: its kernel log cannot be read",
    summary=(
        "The GPU collector cannot read the kernel log of {node} over SSH since {since} "
        "(permission denied, dmesg restricted, or journalctl/dmesg missing; the daemon's log "
        "says which): GPU XIDs there go unseen. Fix one of: allow unprivileged dmesg with "
        "`sysctl kernel.dmesg_restrict=0` (persist it in /etc/sysctl.d/); add the SSH user "
        "to the `adm` or `systemd-journal` group (journalctl -k); or add a sudo rule for "
        "the SSH user and set `kernel_log_command: sudo -n dmesg` for the node."
    ),
)

# Why `for: 800ms`: the liveness probe connects to every node's sshd and serving port each
# second with a 400ms timeout, and a node whose ports fail is probed again at once, every
# 400ms. A cut at t is seen by the first probe after it (t + up to 1s), which fails at
# +400ms; the group is pending from there, and 800ms later the third failed round in a row
# (6 failed connects, 1.2s without an answer) makes it fire: t + 1.2s to t + 2.2s, then
# the transaction that opens the incident. A blip under 800ms cannot fail three rounds.
NODE_DOWN = ReachabilityRule(
    type="reachability",
    name="node-down",
    severity="critical",
    lost="node",
    for_=0.8,
    group_by=["node"],
    title="{node}: node down, unreachable",
    summary=(
        "{node} has answered on none of its signals since {since} ({signals}). Its GPU, "
        "disk and probe incidents are suppressed while it is down. Fail it over to a "
        "standby node."
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
NODE_SSH_UNREACHABLE = ReachabilityRule(
    type="reachability",
    name="node-ssh-unreachable",
    lost="ssh",
    for_=10.0,
    group_by=["node"],
    title="{node}: SSH unreachable, still serving",
    summary=(
        "sshd on {node} has not answered since {since} ({signals}), but the node still "
        "serves, so it is not failed over. Runbooks and the SSH collectors cannot reach it "
        "(its GPU readings are held): restart sshd from the console or the BMC."
    ),
    inhibits=["gpu-source-down"],
)
SERVING_DOWN = ReachabilityRule(
    type="reachability",
    name="serving-down",
    lost="serving",
    for_=60.0,
    group_by=["node"],
    title="{node}: serving port down, node up",
    summary=(
        "{node} has not accepted connections on its serving port since {since} ({signals}) "
        "while sshd answers: the engine or its container is down. Restart the container."
    ),
    runbook=CONTAINER_RESTART,
    inhibits=["local-pool-errors"],
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
# Why 15s, above 50%, for 3s: a hosted endpoint is probed every 3s by default
# (EndpointConfig.interval: under the one probe per 2s a provider tolerates, with the
# once-a-minute completion probe), so the window holds the last 5 probes (6 when one
# came late or the completion probe is among them), and more than half busy takes 3 (4)
# busy answers, not one stray 503. The API turns busy at t; the first busy probe is sent
# by t+3s, the third by t+9s (the fourth by t+12s); the condition holds `for` 3s more and
# detection ticks every 0.5s: the incident fires, and its automatic upstream-failover is
# handed to the runbooks, by t+12.5s (t+15.5s at worst), within the 20s promised.
UPSTREAM_OVERLOADED = ErrorRatioRule(
    type="error_ratio",
    name="upstream-overloaded",
    severity="critical",
    role="hosted",
    overload_only=True,
    window=15.0,
    above=0.5,
    for_=3.0,
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
    window=60.0,
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
NOTIFIER_FAILING = ThresholdRule(
    type="threshold",
    name="notifier-failing",
    severity="critical",
    metric=catalog.NOTIFIER_HEALTHY.name,
    op="<",
    value=1.0,
    resolve_after=60.0,
    group_by=["notifier"],
    title="{notifier}: pages cannot be delivered",
    summary=(
        "{notifier} refuses every page since {since} (a revoked or wrong token, an archived "
        "channel, the bot removed from its channel): nobody is paged. The pages wait in the "
        "outbox and go out once it is fixed; `reliability status` names the reason and "
        "`reliability notify test` checks each channel."
    ),
)

BUILTIN: tuple[AnyRule, ...] = (
    GPU_UTILIZATION_HIGH,
    GPU_TEMPERATURE_SLOWDOWN,
    GPU_XID_CRITICAL,
    GPU_LOST,
    GPU_SOURCE_DOWN,
    XID_DETECTION_OFF,
    NODE_DOWN,
    NODE_SSH_UNREACHABLE,
    SERVING_DOWN,
    DISK_ALMOST_FULL,
    UPSTREAM_OVERLOADED,
    UPSTREAM_RECOVERED,
    LOCAL_POOL_ERRORS,
    NOTIFIER_FAILING,
)


# Rule fields an override cannot change: another name or type is another rule.
FIXED_FIELDS = ("name", "type")


def field_names(rule: AnyRule) -> list[str]:
    """The fields of the rule's type as the config spells them (`for`, not `for_`)."""
    return sorted(f.alias or name for name, f in type(rule).model_fields.items())


def overridden(rule: AnyRule, fields: Mapping[str, Any]) -> AnyRule:
    """`rule` with `fields` (config spelling) changed and the others kept, validated as the
    whole rule is (pydantic's ValidationError when the result is not a valid rule)."""
    return type(rule).model_validate({**rule.model_dump(by_alias=True), **fields})


def active_rules(rules: Rules) -> list[AnyRule]:
    """The rules to evaluate: built-ins (unless off), replaced by custom rules of the same
    name, plus the other custom rules, each changed by its override, minus the disabled
    ones. The config check (detect/checks.py) has validated the overrides."""
    by_name: dict[str, AnyRule] = {r.name: r for r in BUILTIN} if rules.builtin else {}
    for rule in rules.custom:
        by_name[rule.name] = rule
    for name, fields in rules.overrides.items():
        by_name[name] = overridden(by_name[name], fields)
    off = set(rules.disabled)
    return [rule for name, rule in by_name.items() if name not in off]


def ratio_windows(rules: Rules) -> tuple[float, ...]:
    """The seconds the API collector's error and busy ratios must cover: 1m and 5m (the
    dashboards and `status` read those) and the window of every active error-ratio rule."""
    windows = set(catalog.API_RATIO_WINDOWS)
    windows |= {r.window for r in active_rules(rules) if isinstance(r, ErrorRatioRule)}
    return tuple(sorted(windows))
