"""What `reliability daemon --once` prints: one row per target, with what it saw."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from reliability import catalog
from reliability.cli_support import console, print_json
from reliability.collect.base import Sample
from reliability.collect.runner import Outcome
from reliability.collect.snapshot import Snapshot


def _values(samples: Sequence[Sample], metric: catalog.Metric) -> list[float]:
    return [s.value for s in samples if s.metric is metric and isinstance(s.value, float)]


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def headline(collector: str, samples: Sequence[Sample]) -> str:
    """A few words an on-call engineer reads first for a target of this collector."""
    parts: list[str] = []
    if collector == "node":
        if rtt := _values(samples, catalog.NODE_SSH_RTT):
            parts.append(f"ssh {rtt[0] * 1000:.0f} ms")
        load = [s for s in samples if s.metric is catalog.NODE_LOAD and s.labels[1] == "1m"]
        if load:
            parts.append(f"load {load[0].value:g}")
        if mem := _values(samples, catalog.NODE_MEMORY_AVAILABLE):
            parts.append(f"mem free {_gib(mem[0])}")
        for s in samples:
            if s.metric is catalog.NODE_PATH_FREE:
                parts.append(f"{s.labels[1]} free {_gib(float(s.value))}")
            if s.metric is catalog.NODE_CONTAINER_RUNNING:
                parts.append(f"{s.labels[1]} {s.labels[2]}")
    elif collector == "gpu":
        visible = _values(samples, catalog.NODE_GPUS_VISIBLE)
        expected = _values(samples, catalog.NODE_GPUS_EXPECTED)
        if visible:
            parts.append(f"{visible[0]:g}/{expected[0] if expected else 0:g} GPUs")
        if lost := [v for v in _values(samples, catalog.NODE_GPUS_LOST) if v]:
            parts.append(f"{lost[0]:g} LOST")
        if temps := _values(samples, catalog.GPU_TEMPERATURE):
            parts.append(f"max {max(temps):g}°C")
        if util := _values(samples, catalog.GPU_UTILIZATION):
            parts.append(f"util {sum(util) / len(util):.0%}")
        if xids := sum(_values(samples, catalog.GPU_XID_ERRORS)):
            parts.append(f"{xids:g} XID")
    elif collector == "api":
        ratio = [s for s in samples if s.metric is catalog.API_ERROR_RATIO and s.labels[1] == "1m"]
        if ratio:
            parts.append(f"errors {float(ratio[0].value):.0%} (1m)")
    return ", ".join(parts)


def print_outcomes(snapshot: Snapshot, outcomes: Sequence[Outcome], *, as_json: bool) -> None:
    states = {(s.collector, s.target): s for s in snapshot.states()}
    ordered = sorted(outcomes, key=lambda o: (o.collector, o.target))
    if as_json:
        print_json(
            [
                {
                    "collector": o.collector,
                    "target": o.target,
                    "ok": o.ok,
                    "duration_seconds": round(o.duration, 4),
                    "reason": o.reason,
                    "error": o.error,
                    "samples": [
                        {"metric": s.metric.name, "labels": s.label_dict(), "value": s.value}
                        for s in states[(o.collector, o.target)].samples
                        if isinstance(s.value, float)
                    ],
                }
                for o in ordered
            ]
        )
        return
    table = Table(box=None, header_style="bold")
    for col in ("COLLECTOR", "TARGET", "STATUS", "TIME", "SAW"):
        table.add_column(col, overflow="fold")
    for o in ordered:
        state = states[(o.collector, o.target)]
        status = "[green]ok[/]" if o.ok else f"[red]{o.reason}[/]"
        saw = headline(o.collector, state.samples) if o.ok else (o.error or "")
        table.add_row(o.collector, o.target, status, f"{o.duration * 1000:.0f} ms", saw)
    console.print(table)
    failed = sum(not o.ok for o in outcomes)
    console.print(f"{len(outcomes) - failed}/{len(outcomes)} targets answered")
