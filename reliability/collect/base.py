"""The contract between collectors and the rest of the daemon.

A collector is a plain object with a `name`, the `targets()` it polls and one method,
`collect(target)`, that returns the target's samples or raises `CollectError`. It does
its own I/O with its own deadline; the runner (collect/runner.py) fans targets out on a
bounded pool and publishes what came back into the snapshot that `/metrics` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reliability.catalog import Metric

# Each collector's `name`: the `collector` label of its target series (target_up, ...),
# here so a reader of those series (`status`) need not import the collectors themselves.
NODE, GPU, API = "node", "gpu", "api"
LIVENESS = "liveness"  # the liveness probe (collect/liveness.py): one target per node


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """A histogram's state: cumulative count per upper bound (ending with +Inf), count, sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


@dataclass(frozen=True, slots=True)
class Sample:
    """One series value. `labels` are the values of `metric.labels`, in that order."""

    metric: Metric
    labels: tuple[str, ...]
    value: float | HistogramValue

    def label_dict(self) -> dict[str, str]:
        return dict(zip(self.metric.labels, self.labels, strict=True))


class CollectError(Exception):
    """A target could not be collected. `reason` is a short label value for dashboards
    (timeout, unreachable, host_key, auth, bad_output, ...); the message says why."""

    def __init__(self, reason: str, message: str, *, samples: Sequence[Sample] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        # What the collector still knows about a failed target (e.g. node_up 0), published
        # in place of the stale samples it had before.
        self.samples = tuple(samples)


class Collector(Protocol):
    name: str

    def targets(self) -> Sequence[str]: ...

    def collect(self, target: str) -> Sequence[Sample]: ...
