"""`image_deploys`: every container a runbook (or an operator) started, by digest.
`known_good_images`: digests a service ran well on, after its soak time without an
incident, or because an operator said so; the newest is what rollbacks and failovers use.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import Base, UTCDateTime


class ImageDeploy(Base):
    __tablename__ = "image_deploys"
    __table_args__ = (sa.Index("ix_image_deploys_service_at", "service", "deployed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    service: Mapped[str] = mapped_column(sa.String(64))
    node: Mapped[str] = mapped_column(sa.String(64))
    image: Mapped[str] = mapped_column(sa.Text)
    digest: Mapped[str] = mapped_column(sa.String(80))
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("runbook_runs.id", ondelete="SET NULL")
    )


class KnownGoodImage(Base):
    __tablename__ = "known_good_images"
    __table_args__ = (sa.UniqueConstraint("service", "digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    service: Mapped[str] = mapped_column(sa.String(64))
    image: Mapped[str] = mapped_column(sa.Text)
    digest: Mapped[str] = mapped_column(sa.String(80))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    # "soak" (healthy for the service's soak time) or the operator who marked it.
    by: Mapped[str] = mapped_column(sa.String(255))
    reason: Mapped[str | None] = mapped_column(sa.Text)
