"""The configured fleet as info series: which pool a node serves, which endpoints are hosted.

Dashboards join them to the measured series (`... * on (node) group_left (pool)
reliability_node_info`) to add up power draw by pool or to pick out the hosted APIs, the way
`kube_node_info` is used. They change only with the config, so the daemon publishes them
once, at start; an unset pool or service is an empty label value.
"""

from __future__ import annotations

from reliability import catalog
from reliability.collect.base import Sample
from reliability.config import Config

COLLECTOR = "inventory"
TARGET = "config"


def inventory_samples(config: Config) -> list[Sample]:
    """One `node_info` per node and one `endpoint_info` per endpoint, each 1."""
    nodes = [Sample(catalog.NODE_INFO, (n.name, n.pool or "", n.role), 1.0) for n in config.nodes]
    endpoints = [
        Sample(catalog.ENDPOINT_INFO, (e.name, e.role, e.service or ""), 1.0)
        for e in config.endpoints
    ]
    return nodes + endpoints
