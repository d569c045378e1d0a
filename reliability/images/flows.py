"""Image work that spans domains: what the nodes really run is recorded as deployed
(`record_running`, from the node collector's readings: a deploy by CI or by hand counts
like a runbook's), and a digest becomes known-good after its service's soak time with no
incident on the service, its pools or its nodes (the daemon's timers call
`promote_soaked`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.config import Config, ServiceConfig
from reliability.images import service as images
from reliability.images.models import ImageDeploy
from reliability.incidents.models import Incident


def record_running(
    session: Session, *, config: Config, running: Mapping[str, str], now: datetime
) -> list[ImageDeploy]:
    """Record as deployed `now` each image in `running` (node -> REF@sha256:...) that is not
    what the registry last recorded on that node for its service (the service whose pool
    the node is in; other nodes are left out)."""
    recorded = []
    for name, image in sorted(running.items()):
        node = next((n for n in config.nodes if n.name == name), None)
        service = next(
            (s for s in config.services if node is not None and node.pool in s.pools), None
        )
        if service is None:
            continue
        last = images.latest_deploy(session, service=service.name, node=name)
        if last is not None and last.digest == images.digest_of(image):
            continue
        recorded.append(
            images.record_deploy(
                session, service=service.name, node=name, image=image, at=now, run_id=None
            )
        )
    return recorded


@dataclass(frozen=True, slots=True)
class Promoted:
    service: str
    image: str
    deployed_at: datetime


def promote_soaked(session: Session, *, config: Config, now: datetime) -> list[Promoted]:
    """Mark known-good each service's newest deployed digest that has run for the service's
    soak time with no incident on the service, its pools or its nodes since the deploy."""
    promoted = []
    for service in config.services:
        latest = images.latest_deploy(session, service=service.name)
        if latest is None or now - latest.deployed_at < timedelta(seconds=service.soak):
            continue
        if images.is_known_good(session, service=service.name, digest=latest.digest) or _troubled(
            session, config, service, latest.deployed_at
        ):
            continue
        at = latest.deployed_at
        reason = f"healthy for {service.soak:g}s after the deploy of {at:%Y-%m-%d %H:%M:%SZ}"
        images.mark_good(
            session, service=service.name, image=latest.image, by="soak", at=now, reason=reason
        )
        promoted.append(Promoted(service.name, latest.image, latest.deployed_at))
    return promoted


def _troubled(session: Session, config: Config, service: ServiceConfig, since: datetime) -> bool:
    """Whether an incident touching the service was open at any time after `since`."""
    nodes = {n.name for n in config.nodes if n.pool in service.pools}
    incidents = session.scalars(
        sa.select(Incident).where(
            sa.or_(Incident.resolved_at.is_(None), Incident.resolved_at >= since)
        )
    )
    for incident in incidents:
        labels = incident.labels or {}
        if (
            labels.get("service") == service.name
            or labels.get("node") in nodes
            or labels.get("pool") in service.pools
        ):
            return True
    return False
