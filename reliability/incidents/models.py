"""Incident tables and their read shapes.

An incident is keyed by its `fingerprint` (the identity of the signal that raised it): at most
one unresolved incident exists per fingerprint, enforced by a partial unique index, so
concurrent writers cannot create duplicates. `incident_events` is its timeline. A `silences`
row mutes notifications for the incidents whose labels match it, for a while; it never stops
them being recorded.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import JSON, Base, UTCDateTime, string_enum
from reliability.incidents.kinds import IncidentStatus, Severity


class EventKind(StrEnum):
    """Kinds of timeline entries. Stored as plain strings: later domains add their own kinds."""

    opened = "opened"
    refired = "refired"
    acknowledged = "acknowledged"
    resolved = "resolved"
    reopened = "reopened"
    note = "note"
    # Nobody resolved it within the ack timeout: open again, and the channel is pinged.
    ack_expired = "ack_expired"
    # A silence that held back its notifications ended while it was still unresolved.
    silence_ended = "silence_ended"
    # The same for a maintenance window; it also starts the escalation's chain over.
    maintenance_ended = "maintenance_ended"
    # Silenced from its message (Slack's button); never notified: the silence mutes it anyway.
    silenced = "silenced"
    # Someone asked for what they may not do (resolve, run a runbook from Slack); never notified.
    refused = "refused"
    # A runbook's confirm step asks in the thread (`approval: slack`), with Approve / Reject.
    approval_asked = "approval_asked"
    # Still unacknowledged: a step of the severity's escalation policy mentions someone.
    escalated = "escalated"


# The partial unique index's predicate, also named by upserts (ON CONFLICT ... WHERE) so the
# database picks that index as the arbiter: it must be this literal text, not a bound value.
UNRESOLVED = sa.text("status != 'resolved'")


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (
        sa.Index(
            "uq_incidents_fingerprint_unresolved",
            "fingerprint",
            unique=True,
            sqlite_where=UNRESOLVED,
            postgresql_where=UNRESOLVED,
        ),
        sa.Index("ix_incidents_status_last_seen_at", "status", "last_seen_at"),
        # Finds the recently resolved incident to reopen without scanning the history.
        sa.Index("ix_incidents_fingerprint_resolved_at", "fingerprint", "resolved_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(255))
    title: Mapped[str] = mapped_column(sa.Text)
    severity: Mapped[Severity] = mapped_column(string_enum(Severity, "severity"))
    status: Mapped[IncidentStatus] = mapped_column(string_enum(IncidentStatus, "status"))
    source: Mapped[str] = mapped_column(sa.String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    summary: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    occurrences: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(sa.String(255))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(sa.String(255))
    reopen_count: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))

    def __repr__(self) -> str:
        return f"<Incident {self.id} {self.fingerprint!r} {self.status}>"


class IncidentEvent(Base):
    __tablename__ = "incident_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(
        sa.ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(sa.String(32))
    actor: Mapped[str | None] = mapped_column(sa.String(255))
    message: Mapped[str | None] = mapped_column(sa.Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    def __repr__(self) -> str:
        return f"<IncidentEvent {self.id} incident={self.incident_id} {self.kind}>"


class Silence(Base):
    """Mutes notifications, from `starts_at` until `ends_at` (or `expired_at`, when ended
    early), for every incident whose labels satisfy all `matchers`: a list of
    ``{"label", "op", "value"}`` with op ``=`` (equal) or ``=~`` (the regex matches the whole
    value), as Alertmanager does.
    Rows are never deleted, so who silenced what stays on record."""

    __tablename__ = "silences"
    # The active ones are those not yet ended: the dispatcher reads them on every busy pass.
    __table_args__ = (sa.Index("ix_silences_ends_at", "ends_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    matchers: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(sa.String(255))
    comment: Mapped[str | None] = mapped_column(sa.Text)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<Silence {self.id} {self.matchers!r} until {self.ends_at}>"


class IncidentRead(BaseModel):
    """An incident as the CLI and API print it (`IncidentRead.model_validate(incident)`)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    fingerprint: str
    title: str
    severity: Severity
    status: IncidentStatus
    source: str
    labels: dict[str, str]
    summary: str | None
    started_at: datetime
    last_seen_at: datetime
    occurrences: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    reopen_count: int


class IncidentEventRead(BaseModel):
    """One timeline entry as the CLI and API print it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    incident_id: int
    at: datetime
    kind: str
    actor: str | None
    message: str | None
    data: dict[str, Any] | None


class SilenceRead(BaseModel):
    """A silence as the CLI prints it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    matchers: list[dict[str, str]]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str | None
    expired_at: datetime | None
