"""`oncall_overrides`: who covers a rotation instead of its scheduled person, and when.

Rows are never deleted: a cancelled override keeps its row with `cancelled_at`, so who
was on call at any past instant can still be told. It applies over `[starts_at, until)`.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import Base, UTCDateTime


class Override(Base):
    __tablename__ = "oncall_overrides"
    # Who is on call reads a rotation's overrides that have not ended.
    __table_args__ = (sa.Index("ix_oncall_overrides_rotation_ends_at", "rotation", "ends_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rotation: Mapped[str] = mapped_column(sa.String(64))
    user_id: Mapped[str] = mapped_column(sa.String(32))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_by: Mapped[str | None] = mapped_column(sa.String(255))

    @property
    def until(self) -> datetime:
        """When it stops applying: its end, or its cancellation if that came first."""
        if self.cancelled_at is not None and self.cancelled_at < self.ends_at:
            return self.cancelled_at
        return self.ends_at

    def __repr__(self) -> str:
        return f"<Override {self.id} {self.rotation} {self.user_id} {self.starts_at}..{self.until}>"
