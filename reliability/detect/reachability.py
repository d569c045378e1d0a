"""Is a node down, or only part of it? Judged from several signals, never from one.

The signals of a node: the liveness probe's last TCP connect to its sshd port and to its
serving port (each up or not, since when), and the SSH collector's last `node_up` with
the time of its last successful collection. `judge` combines them:

- `node` (unreachable): every probed port fails and no SSH collection has succeeded since
  the last of them stopped answering. Only this one means the node is gone (failover).
- `ssh`: sshd's port fails, or the SSH collection does (a hung sshd, refused logins),
  and the node is not unreachable: it serves, or an SSH session opened before sshd died
  still answers. Only its management is lost.
- `serving`: the serving port fails and the node is not unreachable: the engine or its
  container is down on a live node.

Without probe data (the probe off, or not answered yet) `node_up` alone decides, as the
SSH collector always did: 0 is `node`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reliability import catalog
from reliability.collect.base import HistogramValue, Sample
from reliability.collect.liveness import SERVING, SSH, PortState
from reliability.detect.render import format_time

NODE, SSH_LOST, SERVING_LOST = "node", "ssh", "serving"


@dataclass(frozen=True, slots=True)
class NodeSignals:
    """What the daemon last knew of one node. `ports`: signal -> probe state (only the
    probed ones); `collected_up`: the SSH collector's last `node_up` (None: not yet);
    `collected_at`: when its latest collection started, if that one succeeded (Unix time;
    its start, not its end: one whose answer came before a cut may end after it)."""

    ports: dict[str, PortState]
    collected_up: bool | None = None
    collected_at: float | None = None


def judge(s: NodeSignals) -> frozenset[str]:
    """The node's problems: {"node"} when unreachable, else a subset of {"ssh", "serving"}."""
    if not s.ports:
        return frozenset({NODE}) if s.collected_up is False else frozenset()
    down = [p for p in s.ports.values() if not p.up]
    # A collection that started after the ports went silent, and succeeded: SSH answers.
    collected_since = (
        s.collected_at is not None and bool(down) and s.collected_at > max(p.since for p in down)
    )
    if len(down) == len(s.ports) and not collected_since:
        return frozenset({NODE})
    problems = set()
    ssh = s.ports.get(SSH)
    # Not vetoed by a collection since: it may run on a session opened before sshd died.
    if (ssh is not None and not ssh.up) or s.collected_up is False:
        problems.add(SSH_LOST)
    serving = s.ports.get(SERVING)
    if serving is not None and not serving.up:
        problems.add(SERVING_LOST)
    return frozenset(problems)


def describe(s: NodeSignals) -> str:
    """The signals as a summary says them: `ssh port no answer since 12:00:01; ...`."""
    parts = []
    for signal in (SSH, SERVING):
        p = s.ports.get(signal)
        if p is not None:
            state = "answers" if p.up else f"{p.reason or 'down'}"
            parts.append(f"{signal} port {state} since {format_time(p.since)}")
    if s.collected_up is not None:
        parts.append(f"SSH collection {'answers' if s.collected_up else 'fails'}")
    return "; ".join(parts) or "no signal yet"


def node_signals(samples: Mapping[str, list[Sample]]) -> dict[str, NodeSignals]:
    """Every node's signals from one cycle's samples (metric name -> samples)."""
    ports: dict[str, dict[str, PortState]] = {}
    since = {
        s.labels: s.value
        for s in samples.get(catalog.NODE_LIVENESS_SINCE.name, [])
        if not isinstance(s.value, HistogramValue)
    }
    for s in samples.get(catalog.NODE_LIVENESS_UP.name, []):
        node, signal = s.labels
        at = since.get(s.labels)
        if isinstance(s.value, HistogramValue) or at is None:
            continue
        up = s.value == 1.0
        ports.setdefault(node, {})[signal] = PortState(up, at, "" if up else "no answer")
    collected = {
        s.labels[0]: s.value == 1.0
        for s in samples.get(catalog.NODE_UP.name, [])
        if not isinstance(s.value, HistogramValue)
    }
    collected_at = {}
    meta = {
        m.name: {
            s.labels[1]: s.value
            for s in samples.get(m.name, [])
            if s.labels[0] == "node" and not isinstance(s.value, HistogramValue)
        }
        for m in (catalog.TARGET_UP, catalog.TARGET_LAST_SUCCESS, catalog.TARGET_DURATION)
    }
    for node, ended in meta[catalog.TARGET_LAST_SUCCESS.name].items():
        took = meta[catalog.TARGET_DURATION.name].get(node)
        if meta[catalog.TARGET_UP.name].get(node) == 1.0 and took is not None:
            collected_at[node] = ended - took
    return {
        node: NodeSignals(ports.get(node, {}), collected.get(node), collected_at.get(node))
        for node in sorted(set(ports) | set(collected))
    }
