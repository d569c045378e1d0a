"""`cluster_members` (one row per daemon, its heartbeat) and `cluster_lease` (the leader).

Every time in these tables is the database server's (`now()`), written and compared there:
no daemon's own clock decides who is alive or who leads. A member is live while its
heartbeat is younger than the lease; the leader holds `cluster_lease` until `expires_at`,
and each new holder gets the next `epoch`, so a leader that was taken for gone can tell,
before it acts, that it no longer leads.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import JSON, Base, UTCDateTime

LEADER = "leader"  # the one lease row


class Member(Base):
    __tablename__ = "cluster_members"

    member_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    # Random per process: a second daemon configured with a live member's id is told apart.
    incarnation: Mapped[str] = mapped_column(sa.String(32))
    host: Mapped[str] = mapped_column(sa.String(255))
    http: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The shard keys it collects ("node:gpu-1", "endpoint:openai"), as of its last heartbeat.
    targets: Mapped[list[str]] = mapped_column(JSON)


class Lease(Base):
    __tablename__ = "cluster_lease"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(sa.String(64))
    epoch: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The live members when the shares last changed, and when (written by the leader).
    members: Mapped[list[str] | None] = mapped_column(JSON)
    rebalanced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
