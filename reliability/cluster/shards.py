"""Which member collects what: the config's targets as shard keys, and rendezvous hashing.

A shard key is what must be watched by one member, whole: a node with its GPUs and the
endpoints served from its address (`node-down` holds back their incidents, so one
evaluator must see both); a hosted endpoint with the route files of the services that
fall back from it (`upstream-recovered` reads both); any other endpoint alone. GPUs read
through NVML are the daemon's own host's, never a share: every member collects its own.

Rendezvous (highest random weight) hashing gives each key to the live member with the
highest hash of (member, key): every member computes the same owners from the same list,
and a member joining or leaving moves only the keys it gains or held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from reliability.collect.base import API, GPU, LIVENESS, NODE
from reliability.collect.route import RouteCollector
from reliability.config import Config


def weight(member: str, key: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that holds `key` among `members`; None when there are none."""
    return max(members, key=lambda m: (weight(m, key), m), default=None)


def assign(keys: Iterable[str], members: Iterable[str]) -> dict[str, list[str]]:
    """Every member's keys (each key to exactly one member), members with none included."""
    listed = sorted(set(members))
    out: dict[str, list[str]] = {m: [] for m in listed}
    for key in sorted(set(keys)):
        chosen = owner(key, listed)
        if chosen is not None:
            out[chosen].append(key)
    return out


class Shards:
    """The config's shard keys, by collector target and by incident labels."""

    def __init__(self, config: Config) -> None:
        by_address = {n.address: n.name for n in config.nodes}
        self._nodes = {n.name for n in config.nodes}
        self._local_gpus = {n.name for n in config.nodes if n.gpu_backend == "nvml"}
        self._endpoints: dict[str, str] = {}
        for e in config.endpoints:
            node = by_address.get(urlsplit(e.url).hostname or "")
            self._endpoints[e.name] = f"node:{node}" if node else f"endpoint:{e.name}"
        self._services: dict[str, str] = {}
        for s in config.services:
            hosted = config.hosted_endpoints(s.name)
            if len(hosted) == 1:
                self._services[s.name] = self._endpoints[hosted[0].name]
            elif s.load_balancer is not None and s.load_balancer.route is not None:
                self._services[s.name] = f"service:{s.name}"

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(
            {f"node:{n}" for n in self._nodes}
            | set(self._endpoints.values())
            | set(self._services.values())
        )

    def of_target(self, collector: str, target: str) -> str | None:
        """The key of one collector's target; None: not shared out (every member runs it)."""
        if collector in (NODE, LIVENESS) or (collector == GPU and target not in self._local_gpus):
            return f"node:{target}" if target in self._nodes else None
        if collector == API:
            return self._endpoints.get(target)
        if collector == RouteCollector.name:
            return self._services.get(target)
        return None

    def of_labels(self, labels: Mapping[str, str]) -> str | None:
        """The key an incident's labels point at (its node, else its endpoint, else its
        service); None for what no share holds (a notifier)."""
        if labels.get("node") in self._nodes:
            return f"node:{labels['node']}"
        if labels.get("endpoint") in self._endpoints:
            return self._endpoints[labels["endpoint"]]
        return self._services.get(labels.get("service", ""))
