"""The image registry: record deploys, find and mark known-good digests, promote a digest
after its soak time without an incident.

A known-good image is what failover and rollback runbooks deploy (`image: known-good`):
the newest digest of the service marked good, else the config's `image` when it is pinned
by digest. Nothing here talks to a node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.config import Config, ServiceConfig
from reliability.images.models import ImageDeploy, KnownGoodImage
from reliability.incidents.models import Incident

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class NoKnownGood(LookupError):
    """No known-good image of a service: nothing to fail over or roll back to."""


@dataclass(frozen=True, slots=True)
class Promoted:
    service: str
    image: str
    deployed_at: datetime


def digest_of(image: str) -> str:
    """The `sha256:...` digest an image reference is pinned to; ValueError if none."""
    found = _DIGEST.search(image.rsplit("@", 1)[-1])
    if found is None:
        raise ValueError(f"{image!r} is not pinned by digest (REF@sha256:<64 hex>)")
    return found.group(0)


def record_deploy(
    session: Session, *, service: str, node: str, image: str, at: datetime, run_id: int | None
) -> ImageDeploy:
    deploy = ImageDeploy(
        service=service,
        node=node,
        image=image,
        digest=digest_of(image),
        deployed_at=at,
        run_id=run_id,
    )
    session.add(deploy)
    session.flush()
    return deploy


def mark_good(
    session: Session, *, service: str, image: str, by: str, at: datetime, reason: str | None = None
) -> KnownGoodImage:
    """Mark `image` known-good for `service`; marking it again keeps the first record."""
    digest = digest_of(image)
    row = session.scalars(
        sa.select(KnownGoodImage).where(
            KnownGoodImage.service == service, KnownGoodImage.digest == digest
        )
    ).one_or_none()
    if row is None:
        row = KnownGoodImage(
            service=service, image=image, digest=digest, since=at, by=by, reason=reason
        )
        session.add(row)
        session.flush()
    return row


def known_good(session: Session, service: ServiceConfig) -> str:
    """The image a service's rollbacks and failovers deploy, or NoKnownGood saying how to
    set one."""
    row = session.scalars(
        sa.select(KnownGoodImage)
        .where(KnownGoodImage.service == service.name)
        .order_by(KnownGoodImage.since.desc(), KnownGoodImage.id.desc())
        .limit(1)
    ).one_or_none()
    if row is not None:
        return row.image
    if service.image and _DIGEST.search(service.image):
        return service.image
    raise NoKnownGood(
        f"service {service.name} has no known-good image: mark one with "
        f"`reliability images mark-good {service.name} REF@sha256:...`, or pin the "
        f"service's `image` in the config by digest"
    )


def deploys(session: Session, *, service: str | None = None, limit: int = 50) -> list[ImageDeploy]:
    query = sa.select(ImageDeploy).order_by(ImageDeploy.deployed_at.desc(), ImageDeploy.id.desc())
    if service is not None:
        query = query.where(ImageDeploy.service == service)
    return list(session.scalars(query.limit(limit)))


def known_good_rows(session: Session, *, service: str | None = None) -> list[KnownGoodImage]:
    query = sa.select(KnownGoodImage).order_by(KnownGoodImage.since.desc())
    if service is not None:
        query = query.where(KnownGoodImage.service == service)
    return list(session.scalars(query))


def promote_soaked(session: Session, config: Config, now: datetime) -> list[Promoted]:
    """Mark known-good each service's newest deployed digest that has run for the service's
    soak time with no incident on the service, its pools or its nodes since the deploy."""
    promoted = []
    for service in config.services:
        latest = session.scalars(
            sa.select(ImageDeploy)
            .where(ImageDeploy.service == service.name)
            .order_by(ImageDeploy.deployed_at.desc(), ImageDeploy.id.desc())
            .limit(1)
        ).one_or_none()
        if latest is None or now - latest.deployed_at < timedelta(seconds=service.soak):
            continue
        good = session.scalars(
            sa.select(KnownGoodImage.id).where(
                KnownGoodImage.service == service.name, KnownGoodImage.digest == latest.digest
            )
        ).first()
        if good is not None or _troubled(session, config, service, latest.deployed_at):
            continue
        at = latest.deployed_at
        reason = f"healthy for {service.soak:g}s after the deploy of {at:%Y-%m-%d %H:%M:%SZ}"
        mark_good(
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
