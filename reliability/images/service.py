"""The image registry (database only): record deploys, find and mark known-good digests.
Promotion after a soak without an incident reads the incidents too: `images/flows.py`.

A known-good image is what failover and rollback runbooks deploy (`image: known-good`):
the newest digest of the service marked good, else the config's `image` when it is pinned
by digest. Nothing here talks to a node.
"""

from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.config import ServiceConfig
from reliability.images.models import ImageDeploy, KnownGoodImage

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class NoKnownGood(LookupError):
    """No known-good image of a service: nothing to fail over or roll back to."""


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


def known_good(session: Session, *, service: ServiceConfig) -> str:
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


def latest_deploy(session: Session, *, service: str, node: str | None = None) -> ImageDeploy | None:
    """The newest deploy recorded for `service` (on `node`, when given)."""
    query = sa.select(ImageDeploy).where(ImageDeploy.service == service)
    if node is not None:
        query = query.where(ImageDeploy.node == node)
    return session.scalars(
        query.order_by(ImageDeploy.deployed_at.desc(), ImageDeploy.id.desc()).limit(1)
    ).one_or_none()


def is_known_good(session: Session, *, service: str, digest: str) -> bool:
    return (
        session.scalars(
            sa.select(KnownGoodImage.id).where(
                KnownGoodImage.service == service, KnownGoodImage.digest == digest
            )
        ).first()
        is not None
    )
