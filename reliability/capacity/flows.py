"""A capacity test of one pool, across domains: its nodes from the fleet's live state, the
refusal of a pool carrying production traffic, the load (measure.py), the GPU power the
daemon saw meanwhile, and the row that records it (service.py, by the caller)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.orm import Session

from reliability import catalog
from reliability.capacity import measure
from reliability.capacity.models import CapacityTest, Purpose
from reliability.capacity.plan import Plan
from reliability.config import Config, ServiceConfig
from reliability.fleet import service as fleet_service
from reliability.fleet.models import State
from reliability.runbooks import service as runs
from reliability.runbooks.ops import host_port
from reliability.status import scrape

MODELS_TIMEOUT_S = 5.0


class UnknownTarget(LookupError):
    """No such service, or no such pool of it; the message names the known ones."""


def find_service(config: Config, name: str) -> ServiceConfig:
    for service in config.services:
        if service.name == name:
            return service
    known = ", ".join(s.name for s in config.services) or "none"
    raise UnknownTarget(f"no service is named {name!r} in the config; services: {known}")


def check_pool(service: ServiceConfig, pool: str) -> None:
    if pool not in service.pools:
        raise UnknownTarget(
            f"{service.name} has no pool {pool!r}; its pools: {', '.join(service.pools)}"
        )


def active_pool(session: Session, *, service: ServiceConfig) -> str:
    """The pool the service serves from now: as the last run that switched it left it
    (blue-green, canary), else the config's `active_pool`."""
    live = runs.active_pools(session).get(service.name)
    return live if live in service.pools else service.active_pool


def production_share(pool: str, active: str) -> float:
    """The share of the service's production traffic `pool` carries: the active pool all."""
    return 1.0 if pool == active else 0.0


def check_allowed(service: ServiceConfig, pool: str, active: str) -> None:
    """LoadRefused when the pool carries more production traffic than the config allows."""
    share = production_share(pool, active)
    allowed = service.capacity.max_production_share
    if share > allowed:
        raise measure.LoadRefused(
            f"{pool} is {service.name}'s active pool and carries {share:.0%} of its production "
            f"traffic; a load test would compete with it (allowed: {allowed:.0%}, "
            f"services.{service.name}.capacity.max_production_share). Test the idle pool, "
            f"or raise the share where the pool serves only tests"
        )


def pool_targets(
    session: Session, *, config: Config, service: ServiceConfig, pool: str, now: datetime
) -> dict[str, str]:
    """The base URL of each node serving `pool` now (the fleet's live state), by node."""
    fleet_service.seed(session, config=config, now=now)
    serving = {
        row.node
        for row in fleet_service.nodes(session, config=config)
        if row.state == State.serving and row.pool == pool
    }
    return {
        node.name: f"http://{host_port(node.address, service.port)}"
        for node in config.nodes
        if node.name in serving
    }


def served_model(service: ServiceConfig, url: str) -> str:
    """The service's model, else the one the engine lists first (as `ready` asks it)."""
    if service.model:
        return service.model
    try:
        listed = httpx.get(f"{url}/v1/models", timeout=MODELS_TIMEOUT_S).json()["data"]
        return str(listed[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise measure.LoadFailed(
            f"{url}/v1/models did not name a model ({exc or type(exc).__name__}); set "
            f"services.{service.name}.model"
        ) from None


def pool_power(config: Config, nodes: list[str]) -> float | None:
    """The GPU power the daemon's last collection saw on `nodes` (W), None when the daemon
    does not answer or has no GPU readings of them."""
    try:
        exposition = scrape.fetch(scrape.metrics_url(config.http.listen))
    except scrape.DaemonUnreachable:
        return None
    watts = [
        v for labels, v in exposition.values(catalog.GPU_POWER_DRAW) if labels.get("node") in nodes
    ]
    return round(sum(watts), 1) if watts else None


def run_test(
    config: Config,
    service: ServiceConfig,
    pool: str,
    targets: dict[str, str],
    plan: Plan,
    *,
    purpose: Purpose,
    by: str,
    on_event: measure.Event = lambda kind, data: None,
    power: Callable[[list[str]], float | None] | None = None,
) -> CapacityTest:
    """Run `plan` against the pool's `targets` and return its record (not yet stored): the
    best step within the objectives, every step, and the GPU power at each step's end."""
    read_power = power or (lambda nodes: pool_power(config, nodes))
    nodes = sorted(targets)
    watts: list[float | None] = []

    def observed(kind: str, data: dict[str, Any]) -> None:
        if kind == "step":
            watts.append(read_power(nodes))
        on_event(kind, data)

    started = datetime.now(UTC)
    steps = measure.run(plan, observed)
    return measure.record(service.name, pool, purpose, by, started, nodes, steps, watts)
