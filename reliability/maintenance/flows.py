"""Maintenance work that spans domains: a scope resolved against the config and the fleet's
live state, and the end of a window releasing, notified, what it held back.

    resolve(session, config, text)  `node:NAME`, `pool:NAME`, `service:NAME` or `fleet` as
                                    the incident labels the window covers; ValueError naming
                                    the fix for a name the config does not know
    start(...)                      resolve and record a window
    end(...)                        end (or cancel) it; incidents it held back that are still
                                    unresolved page now, once (incidents/flows.py)

What a scope covers: a node, its incidents (an endpoint on it carries its `node` label); a
pool, its nodes as the fleet has them now (the table wins over the config, as for runbook
plans); a service, its pools' nodes, its endpoints and whatever carries its `service`
label (its load balancer's endpoint); the fleet, every incident.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from reliability.config import Config
from reliability.fleet import service as fleet
from reliability.fleet.models import State
from reliability.incidents import flows as incident_flows
from reliability.incidents.models import IncidentEvent
from reliability.maintenance import service
from reliability.maintenance.models import MaintenanceWindow

KINDS = ("node", "pool", "service")
SCOPE_HINT = "write node:NAME, pool:NAME, service:NAME or fleet"


@dataclass(frozen=True)
class Scope:
    kind: str
    name: str | None
    targets: dict[str, list[str]]


def resolve(session: Session, config: Config, text: str) -> Scope:
    """What `text` covers now (see the module docstring); ValueError saying the fix."""
    text = text.strip()
    if text == "fleet":
        return Scope("fleet", None, {})
    kind, sep, name = text.partition(":")
    known = _known(config)
    if not sep or kind not in KINDS or not name:
        kinds = [k for k in KINDS if text in known[k]]
        hint = f" (did you mean {kinds[0]}:{text}?)" if kinds else ""
        raise ValueError(f"{text!r} is not a scope: {SCOPE_HINT}{hint}")
    if name not in known[kind]:
        listed = ", ".join(known[kind]) or "none"
        where = config.source or "the config"
        raise ValueError(f"{kind} {name!r} is not in {where}; its {kind}s: {listed}")
    if kind == "node":
        return Scope(kind, name, {"node": [name]})
    if kind == "pool":
        return Scope(kind, name, {"node": _pool_nodes(session, config, {name})})
    served = next(s for s in config.services if s.name == name)
    return Scope(
        kind,
        name,
        {
            "service": [name],
            "node": _pool_nodes(session, config, set(served.pools)),
            "endpoint": sorted(e.name for e in config.endpoints if e.service == name),
        },
    )


def start(
    session: Session,
    *,
    config: Config,
    scope: str,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    by: str,
    now: datetime,
) -> MaintenanceWindow:
    """Record a window over `scope` (resolved now); ValueError saying the fix."""
    resolved = resolve(session, config, scope)
    return service.create(
        session,
        scope=resolved.kind,
        name=resolved.name,
        targets=resolved.targets,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason,
        by=by,
        now=now,
    )


def end(
    session: Session, *, window_id: int, by: str, now: datetime
) -> tuple[MaintenanceWindow, list[IncidentEvent]]:
    """End the window now (`service.end`) and release, notified, what it held back that no
    other silence or window still covers: the window and the `maintenance_ended` events."""
    window = service.end(session, window_id=window_id, by=by, now=now)
    return window, incident_flows.release_ended_holds(session, now=now)


def _known(config: Config) -> dict[str, list[str]]:
    pools = {p for s in config.services for p in s.pools} | {n.pool for n in config.nodes if n.pool}
    return {
        "node": [n.name for n in config.nodes],
        "pool": sorted(pools),
        "service": [s.name for s in config.services],
    }


def _pool_nodes(session: Session, config: Config, pools: set[str]) -> list[str]:
    """The nodes serving these pools now: the fleet table's word for the nodes it knows,
    the config's for the others."""
    rows = {row.node: row for row in fleet.nodes(session, config=config)}
    found = {name for name, row in rows.items() if row.state == State.serving and row.pool in pools}
    found |= {n.name for n in config.nodes if n.name not in rows and n.pool in pools}
    return sorted(found)
