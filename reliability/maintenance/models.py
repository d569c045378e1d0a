"""`maintenance_windows`: planned work on part of the fleet, from `starts_at` until `ends_at`
(or `ended_at`, when ended early, or cancelled before it started).

`targets` is the scope resolved when the window was made, as the incident labels it covers:
``{"node": [...], "pool": [...], "service": [...], "endpoint": [...]}`` (an incident is in
the window when one of its labels has one of these values); the whole fleet (`scope`
``fleet``) covers every incident. Resolved once, so the window covers what the operator was
shown when making it, whatever moves in the fleet meanwhile. Rows are never deleted.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import JSON, Base, UTCDateTime


class MaintenanceWindow(Base):
    __tablename__ = "maintenance_windows"
    # Those in force are those not yet ended: the dispatcher reads them on every busy pass.
    __table_args__ = (sa.Index("ix_maintenance_windows_ends_at", "ends_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(sa.String(16))  # node, pool, service or fleet
    name: Mapped[str | None] = mapped_column(sa.String(64))  # None for the fleet
    targets: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(sa.Text)
    created_by: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[str | None] = mapped_column(sa.String(255))

    @property
    def until(self) -> datetime:
        """When it stops applying: its end, or when it was ended if that came first."""
        if self.ended_at is not None and self.ended_at < self.ends_at:
            return self.ended_at
        return self.ends_at

    @property
    def shown(self) -> str:
        """The scope as the CLI takes it: `node:gpu-1`, `pool:blue`, `fleet`."""
        return f"{self.scope}:{self.name}" if self.name else self.scope

    def __repr__(self) -> str:
        return f"<MaintenanceWindow {self.id} {self.shown} {self.starts_at}..{self.until}>"


class MaintenanceWindowRead(BaseModel):
    """A window as the CLI prints it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    scope: str
    name: str | None
    targets: dict[str, list[str]]
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime
    ended_at: datetime | None
    ended_by: str | None
