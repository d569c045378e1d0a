"""The `rules:` section of the config: typed detection rules.

Each rule type names what it watches in the metric catalogue's terms; the detection
engine (detect/) evaluates them into signals. Built-in rules cover every failure of
CONTEXT.md; a custom rule with a built-in's name replaces it, and `overrides` changes
some fields of a rule (built-in or custom) while it keeps the others.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reliability.durations import Duration

Severity = Literal["critical", "warning", "info"]
# The longest probe ratio window: an hour of results is kept per endpoint and window.
MAX_RATIO_WINDOW = 3600.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RunbookSuggestion(_Strict):
    """The runbook an incident of this rule suggests, and whether it may run on its own."""

    name: str
    params: dict[str, str] = {}
    auto: bool = False


class _RuleBase(_Strict):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    severity: Severity = "warning"
    for_: Duration = Field(0.0, alias="for", description="how long the condition must hold")
    resolve_after: Duration = Field(60.0, description="how long it must be clear to resolve")
    group_by: list[str] = Field(
        default_factory=list,
        description="labels making one incident; empty: one incident per series",
    )
    title: str | None = Field(None, description="short template, e.g. '{node}: disk {value} free'")
    summary: str | None = Field(None, description="template: what, where, how bad, since when")
    runbook: RunbookSuggestion | None = None
    inhibits: list[str] = Field(
        default_factory=list, description="rules whose incidents this one suppresses"
    )


class ThresholdRule(_RuleBase):
    """`metric op value`, per series matching `match` (label -> regular expression).

    The threshold is a constant `value`, or `value_metric`: the same series of another
    metric (a GPU's own slowdown temperature). With `per`, the metric is first divided by
    that metric's same series (free bytes per size bytes: a disk's free ratio).
    """

    type: Literal["threshold"]
    metric: str
    match: dict[str, str] = {}
    op: Literal[">", ">=", "<", "<=", "==", "!="] = ">"
    value: float | None = None
    value_metric: str | None = None
    per: str | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> ThresholdRule:
        if (self.value is None) == (self.value_metric is None):
            raise ValueError("give exactly one of `value` or `value_metric`")
        return self


class ErrorRatioRule(_RuleBase):
    """An endpoint's failed (or, with `overload_only`, busy: 503/529/429) probe ratio over
    the last `window`: any whole number of seconds (`20s`, `1m`, `90s`); the API collector
    computes the ratio over every window an active rule reads, labelled with its config
    spelling (`format_duration`: `20s`, `1m`, `1m30s`)."""

    type: Literal["error_ratio"]
    endpoint: str | None = Field(None, description="one endpoint, or all when omitted")
    role: Literal["hosted", "local"] | None = None
    window: Duration = Field(60.0, description="the probes the ratio covers: those this long")
    above: float = Field(..., gt=0, le=1)
    overload_only: bool = False

    @field_validator("window")
    @classmethod
    def _whole_seconds(cls, window: float) -> float:
        # The window is a label value too: 1.5s and 2s would both be spelled `2s`.
        if window < 1 or window != int(window) or window > MAX_RATIO_WINDOW:
            raise ValueError(
                f"window must be a whole number of seconds from 1s to {MAX_RATIO_WINDOW:g}s "
                "(e.g. 20s, 1m, 90s)"
            )
        return window


class RecoveredRule(_RuleBase):
    """A hosted API back to health while its service's traffic is on the local pool: over
    the service's `recovery_soak`, during all of which the route file was the local
    variant, its completion probes (never `/health`) failed at most the service's
    `recovery_error_ratio`, and there were at least `min_probes` of them."""

    type: Literal["recovered"]
    endpoint: str | None = Field(None, description="one hosted endpoint, or all when omitted")
    min_probes: int = Field(3, ge=1, description="completion probes the soak must hold")


class TargetDownRule(_RuleBase):
    """A node, endpoint or GPU source that stopped answering."""

    type: Literal["target_down"]
    collector: Literal["node", "api", "gpu"]


class ReachabilityRule(_RuleBase):
    """A node judged from several signals: the liveness probe's TCP connects to its sshd
    and serving ports (collect/liveness.py) and the SSH collector's `node_up`.

    `lost: node`: nothing answers: every probed port fails, and no SSH collection has
    succeeded since they stopped answering (with no probe: `node_up` 0). `lost: ssh`:
    sshd's port fails, or the SSH collection does, while the node still answers on its
    serving port. `lost: serving`: the serving port fails while sshd answers.
    """

    type: Literal["reachability"]
    lost: Literal["node", "ssh", "serving"]


class CounterIncreaseRule(_RuleBase):
    """A counter (e.g. XIDs with a given `action` label) rose by `min_increase` in `window`."""

    type: Literal["counter_increase"]
    metric: str
    match: dict[str, str] = {}
    window: Duration = 300.0
    min_increase: float = Field(1.0, gt=0)


class GpuLostRule(_RuleBase):
    """GPUs lost or missing on a node against its expected count."""

    type: Literal["gpu_lost"]


Rule = Annotated[
    ThresholdRule
    | ErrorRatioRule
    | RecoveredRule
    | TargetDownRule
    | ReachabilityRule
    | CounterIncreaseRule
    | GpuLostRule,
    Field(discriminator="type"),
]


class Rules(_Strict):
    builtin: bool = Field(True, description="load the built-in rules")
    disabled: list[str] = Field(default_factory=list, description="rule names to switch off")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="rule name -> the fields to change (`for: 10s`); the others are kept",
    )
    custom: list[Rule] = []
