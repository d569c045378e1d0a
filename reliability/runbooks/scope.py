"""What a placeholder can name: a parameter, the node a step runs on (`target`), and the
facts the config holds about them (`{node.service}`, `{service.lb_url}`).

Attributes are a fixed table, typed so the loader can check `{node.service.lb_url}` before
any run, and resolved from the config only, never from a live system.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reliability.config import Config, LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.runbooks.errors import ScopeError

ValueKind = Literal["node", "service", "pool", "value"]
TARGET = "target"


@dataclass(frozen=True, slots=True)
class Pool:
    name: str


def node_pool(cfg: Config, node: NodeConfig) -> Pool:
    if not node.pool:
        raise ScopeError(f"node {node.name} is in no pool")
    return Pool(node.pool)


def pool_service(cfg: Config, pool: Pool) -> ServiceConfig:
    for s in cfg.services:
        if pool.name in s.pools:
            return s
    raise ScopeError(f"no service runs on pool {pool.name}")


def node_service(cfg: Config, node: NodeConfig) -> ServiceConfig:
    return pool_service(cfg, node_pool(cfg, node))


def node_container(cfg: Config, node: NodeConfig) -> str:
    """The serving container's name on the node: its own `container`, else its service's."""
    return node.container or node_service(cfg, node).container_name


def standby_pool(cfg: Config, s: ServiceConfig) -> Pool:
    other = [p for p in s.pools if p != s.active_pool]
    if len(other) != 1:
        raise ScopeError(f"service {s.name} has {len(other)} pools besides its active one, not 1")
    return Pool(other[0])


def load_balancer(s: ServiceConfig) -> LoadBalancerConfig:
    if s.load_balancer is None:
        raise ScopeError(f"service {s.name} has no load_balancer")
    return s.load_balancer


def lb_node(cfg: Config, s: ServiceConfig) -> NodeConfig:
    return cfg.node(load_balancer(s).node)


def hosted_url(cfg: Config, s: ServiceConfig) -> str:
    """The health URL of the hosted API this service falls back from: a hosted endpoint
    naming the service, else the only hosted endpoint naming none."""
    mine = cfg.hosted_endpoints(s.name)
    if len(mine) != 1:
        raise ScopeError(f"{len(mine)} hosted endpoints could be the one of service {s.name}")
    return mine[0].url.rstrip("/") + mine[0].health_path


def _need(value: Any, what: str) -> str:
    if value is None:
        raise ScopeError(f"{what} is not set in the config")
    return str(value)


Getter = Callable[[Config, Any], Any]
ATTRS: dict[ValueKind, dict[str, tuple[ValueKind, Getter]]] = {
    "node": {
        "address": ("value", lambda c, n: n.address),
        "role": ("value", lambda c, n: n.role),
        "pool": ("pool", node_pool),
        "service": ("service", node_service),
        "container": ("value", node_container),
    },
    "service": {
        "active_pool": ("pool", lambda c, s: Pool(s.active_pool)),
        "standby_pool": ("pool", standby_pool),
        "port": ("value", lambda c, s: str(s.port)),
        "model": ("value", lambda c, s: _need(s.model, f"model of service {s.name}")),
        "image": ("value", lambda c, s: _need(s.image, f"image of service {s.name}")),
        "lb": ("node", lb_node),
        "lb_url": ("value", lambda c, s: load_balancer(s).url),
        "lb_health_url": ("value", lambda c, s: str(load_balancer(s).health_url)),
        "hosted_url": ("value", hosted_url),
    },
    "pool": {"service": ("service", pool_service)},
    "value": {},
}


def path_problem(path: tuple[str, ...], kinds: Mapping[str, ValueKind]) -> str | None:
    """Why `{a.b.c}` cannot resolve, given the kind of each name in scope; None if it can."""
    shown = "{" + ".".join(path) + "}"
    if path[0] not in kinds:
        names = ", ".join(sorted(kinds)) or "none"
        return f"unknown placeholder {shown}; use a parameter ({names})"
    kind = kinds[path[0]]
    for attr in path[1:]:
        if attr not in ATTRS[kind]:
            have = ", ".join(sorted(ATTRS[kind])) or "none"
            return f"{shown}: a {kind} has no {attr!r} (attributes: {have})"
        kind = ATTRS[kind][attr][0]
    return None


def as_text(value: Any) -> str:
    """How a resolved value reads in text: a node, service or pool by its name."""
    if isinstance(value, NodeConfig | ServiceConfig | Pool):
        return value.name
    return str(value)


@dataclass(frozen=True, slots=True)
class Scope:
    """The values placeholders resolve to: parameters (typed objects for node, service and
    pool) and, inside a per-node step, `target`."""

    config: Config
    values: Mapping[str, Any]

    def bind(self, name: str, value: Any) -> Scope:
        return Scope(self.config, {**self.values, name: value})

    def lookup(self, path: tuple[str, ...]) -> Any:
        value = self.values[path[0]]
        for attr in path[1:]:
            value = ATTRS[kind_of(value)][attr][1](self.config, value)
        return value

    def text(self, path: tuple[str, ...]) -> str:
        return as_text(self.lookup(path))


def kind_of(value: Any) -> ValueKind:
    if isinstance(value, NodeConfig):
        return "node"
    if isinstance(value, ServiceConfig):
        return "service"
    return "pool" if isinstance(value, Pool) else "value"
