"""A capacity test of one pool, across domains: its nodes from the fleet's live state, the
refusal of a pool carrying production traffic (the share its balancer's live weights give
it, read over SSH), the load (measure.py), the GPU power the daemon saw meanwhile, and the
row that records it (service.py, by the caller)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.orm import Session

from reliability import balancers, catalog
from reliability.capacity import measure
from reliability.capacity.models import CapacityTest, Purpose
from reliability.capacity.plan import Plan
from reliability.config import Config, NodeConfig, ServiceConfig
from reliability.fleet import service as fleet_service
from reliability.fleet.models import State
from reliability.runbooks.ops import host_port
from reliability.ssh import SshError, SshPool, target_for
from reliability.status import scrape

MODELS_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0  # reading the balancer's file, connect included


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


@dataclass(frozen=True, slots=True)
class Share:
    """The share of a service's requests its balancer sends to a pool's nodes now, and
    where that was read: `shown` names the block, the file, the host and the weights."""

    share: float
    shown: str


class ShareUnknown(Exception):
    """The balancer's file could not be read or understood; says why."""


def pool_nodes(session: Session, *, config: Config, pool: str, now: datetime) -> list[NodeConfig]:
    """The nodes serving `pool` now (the fleet's live state), in config order."""
    fleet_service.seed(session, config=config, now=now)
    serving = {
        row.node
        for row in fleet_service.nodes(session, config=config)
        if row.state == State.serving and row.pool == pool
    }
    return [node for node in config.nodes if node.name in serving]


def pool_targets(service: ServiceConfig, nodes: list[NodeConfig]) -> dict[str, str]:
    """The base URL of each of `nodes` for the service, by node."""
    return {n.name: f"http://{host_port(n.address, service.port)}" for n in nodes}


def production_share(
    config: Config, service: ServiceConfig, pool: str, nodes: list[NodeConfig], *, ssh: SshPool
) -> Share:
    """The share of the service's production requests its balancer sends to `nodes` (the
    pool's) now: the live upstream (nginx) or backend (HAProxy) read over SSH on the
    balancer's node, as a runbook's balancer edit reads it, and weighed by
    `Membership.share`. ShareUnknown when the file cannot be read or parsed, or a server
    taking requests there is no node of the config (so it might be one of the pool's)."""
    lb = service.load_balancer
    if lb is None:
        raise ShareUnknown(
            f"services.{service.name} has no load_balancer, so no balancer says which pool "
            "serves its production traffic"
        )
    balancer = balancers.for_config(lb)
    where = f"{lb.upstream_file} on {lb.node}"
    try:
        read = ssh.run(
            target_for(config, config.node(lb.node)),
            balancer.read_command(),
            timeout=READ_TIMEOUT_S,
        )
    except SshError as exc:
        raise ShareUnknown(f"{where} could not be read: {exc}") from None
    if not read.ok:
        detail = read.stderr.strip() or f"exit status {read.exit_status}"
        raise ShareUnknown(f"{where} could not be read: {detail}")
    try:
        membership = balancer.read_membership(read.stdout, service.name)
    except balancers.MembershipError as exc:
        raise ShareUnknown(f"{where}: {exc}") from None
    ours = {host_port(n.address, service.port) for n in nodes}
    known = {host_port(n.address, service.port) for n in config.nodes}
    strays = [
        s.address
        for s in membership.servers
        if not (s.down or s.backup or s.weighs == 0) and s.address not in known
    ]
    if strays:  # which pool they serve is unknown: they might be this one's
        raise ShareUnknown(
            f"{', '.join(strays)} in {balancer.block_kind} {service.name} of {where} take "
            f"requests but are no node of the config (at port {service.port})"
        )
    weights = ", ".join(
        f"{s.address}{' (' + pool + ')' if s.address in ours else ''} "
        + ("down" if s.down else "backup" if s.backup else f"weight {s.weighs}")
        for s in membership.servers
    )
    shown = f"{balancer.block_kind} {service.name} in {where}: {weights or 'no server'}"
    return Share(membership.share(ours), shown)


def check_allowed(service: ServiceConfig, pool: str, share: Share) -> None:
    """LoadRefused when the pool carries more production traffic than the config allows."""
    allowed = service.capacity.max_production_share
    if share.share > allowed:
        raise measure.LoadRefused(
            f"pool {pool} gets {share.share:.0%} of {service.name}'s production traffic "
            f"({share.shown}); a load test would compete with it (allowed: {allowed:.0%}, "
            f"services.{service.name}.capacity.max_production_share). Test a pool the "
            f"balancer sends less to, or raise the share where the pool serves only tests"
        )


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
