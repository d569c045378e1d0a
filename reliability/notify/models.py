"""Outbox and root message tables.

`outbox` is the transactional outbox: the incident flows (`incidents/flows.py`) write one row
per timeline event and notifier, in the transaction that records the event, so a notification
exists exactly when its event does. The dispatcher claims rows with a lease (`claimed_until`)
rather than a lock, so a dispatcher that dies mid-send gives its row back when the lease runs
out. `notification_roots` remembers, per notifier, each incident's root message so every later
update edits it or replies under it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import Base, UTCDateTime

_PENDING = sa.text("status = 'pending'")


class OutboxStatus(StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"  # the notifier refused its content for good; see last_error
    skipped = "skipped"  # old news when first seen, or silenced: never paged for


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        # The dispatcher's hot query: the oldest pending row of each incident.
        sa.Index(
            "ix_outbox_pending_incident",
            "incident_id",
            "id",
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(
        sa.ForeignKey("incident_events.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(sa.String(32))
    # The notifier this row is for (`notify/registry.py`): one row per event and notifier.
    notifier: Mapped[str] = mapped_column(sa.String(32), server_default="slack")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[OutboxStatus] = mapped_column(
        sa.Enum(
            OutboxStatus,
            name="status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda members: [member.value for member in members],
            validate_strings=True,
        ),
        default=OutboxStatus.pending,
        server_default=OutboxStatus.pending.value,
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The silence that muted this row: skipped, or sent only as a silent edit of the root.
    # No foreign key: silences are never deleted, and SQLite could only add one to an
    # existing table by rebuilding it.
    silence_id: Mapped[int | None] = mapped_column()
    # The same for a maintenance window (maintenance/): plain too, for the same reasons.
    maintenance_id: Mapped[int | None] = mapped_column()

    def __repr__(self) -> str:
        return f"<OutboxRow {self.id} incident={self.incident_id} {self.kind} {self.status}>"


class NotificationRoot(Base):
    """Where a notifier posted an incident's root message: `destination` is the one the
    notifier answered (for Slack the channel ID, since chat.update accepts no name), `ref` the
    message's own reference (Slack's ts)."""

    __tablename__ = "notification_roots"

    incident_id: Mapped[int] = mapped_column(
        sa.ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
    )
    notifier: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    destination: Mapped[str] = mapped_column(sa.String(64))
    ref: Mapped[str] = mapped_column(sa.String(64))
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return (
            f"<NotificationRoot incident={self.incident_id} {self.notifier} "
            f"{self.destination} {self.ref}>"
        )


class HandledInteraction(Base):
    """A click on a message's button that was acted on, keyed by what Slack sends again when
    it delivers the same click twice (its ``trigger_id``): inserted in the transaction of the
    action, so a retried delivery finds its row and changes nothing. Kept for a day
    (`service.INTERACTION_RETENTION`), far longer than Slack retries, then pruned."""

    __tablename__ = "handled_interactions"
    # The leader's timers delete the rows past their retention, oldest first.
    __table_args__ = (sa.Index("ix_handled_interactions_at", "at"),)

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    action: Mapped[str] = mapped_column(sa.String(32))
    incident_id: Mapped[int | None] = mapped_column()
    user: Mapped[str] = mapped_column(sa.String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
