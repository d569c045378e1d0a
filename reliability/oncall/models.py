"""On-call overrides: someone covers the rotation's turn for a while
(`reliability oncall override USER --for 4h`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import Base, UTCDateTime


class OncallOverride(Base):
    __tablename__ = "oncall_overrides"
    __table_args__ = (sa.Index("ix_oncall_overrides_ends_at", "ends_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(32))  # a Slack user id
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(sa.String(255))
