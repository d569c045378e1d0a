"""Outbox database work for the dispatcher: find due rows, claim one, record how it went.

Every function takes a Connection whose transaction the caller owns. Claims are a
compare-and-set UPDATE on `claimed_until` (a lease), which serialises two dispatchers on
SQLite and PostgreSQL alike: exactly one of them sees its UPDATE change the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from reliability.db import UTCDateTime
from reliability.incidents.models import (
    EventKind,
    Incident,
    IncidentEvent,
    IncidentEventRead,
    IncidentRead,
    IncidentStatus,
)
from reliability.notify.models import OutboxStatus, SlackMessage
from reliability.notify.outbox import OUTBOX

_incidents = cast(sa.Table, Incident.__table__)
_events = cast(sa.Table, IncidentEvent.__table__)
_roots = cast(sa.Table, SlackMessage.__table__)
_NOW = sa.bindparam("now", type_=UTCDateTime())


def _pending(table: sa.Table | sa.Alias) -> sa.ColumnElement[bool]:
    # A literal, not a bound parameter: SQLite only uses the partial index when the query
    # repeats its predicate word for word.
    return table.c.status == sa.literal_column("'pending'")


def _unclaimed(table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < _NOW)


@dataclass(frozen=True)
class Candidate:
    """A due row at the head of its incident's queue, with what routing needs."""

    id: int
    incident_id: int
    kind: str
    severity: str
    labels: dict[str, str]
    incident_status: IncidentStatus
    resolved_at: datetime | None
    root_channel: str | None


@dataclass(frozen=True)
class Root:
    """Where an incident's root message is."""

    channel: str
    ts: str


@dataclass(frozen=True)
class Claimed:
    """A claimed row and everything its message is rendered from, read in one transaction."""

    id: int
    incident: IncidentRead
    event: IncidentEventRead
    opening_data: dict[str, Any] | None
    root: Root | None


_queued = OUTBOX.alias("queued")
_HEAD = (
    sa.select(sa.func.min(_queued.c.id))
    .where(_queued.c.incident_id == OUTBOX.c.incident_id, _pending(_queued))
    .scalar_subquery()
)
_CANDIDATES = (
    sa.select(
        OUTBOX.c.id,
        OUTBOX.c.incident_id,
        OUTBOX.c.kind,
        _incidents.c.severity,
        _incidents.c.labels,
        _incidents.c.status.label("incident_status"),
        _incidents.c.resolved_at,
        _roots.c.channel.label("root_channel"),
    )
    .join(_incidents, _incidents.c.id == OUTBOX.c.incident_id)
    .outerjoin(_roots, _roots.c.incident_id == OUTBOX.c.incident_id)
    # Only the oldest pending row of each incident, and only while no one holds it: the
    # next row of an incident waits until the one before it is sent, failed or skipped.
    .where(_pending(OUTBOX), OUTBOX.c.id == _HEAD, OUTBOX.c.not_before <= _NOW)
    .where(_unclaimed(OUTBOX))
    .order_by(OUTBOX.c.id)
    .limit(sa.bindparam("limit"))
)
_CLAIM = (
    sa.update(OUTBOX)
    .where(OUTBOX.c.id == sa.bindparam("row_id"), _pending(OUTBOX), _unclaimed(OUTBOX))
    .values(claimed_until=sa.bindparam("until", type_=UTCDateTime()))
    .returning(OUTBOX.c.event_id, OUTBOX.c.incident_id)
)


def due(connection: Connection, *, now: datetime, limit: int) -> list[Candidate]:
    """Up to `limit` rows that may be sent now, oldest first, at most one per incident."""
    rows = connection.execute(_CANDIDATES, {"now": now, "limit": limit})
    return [
        Candidate(
            id=row.id,
            incident_id=row.incident_id,
            kind=row.kind,
            severity=row.severity.value,
            labels=row.labels or {},
            incident_status=row.incident_status,
            resolved_at=row.resolved_at,
            root_channel=row.root_channel,
        )
        for row in rows
    ]


def claim(connection: Connection, *, row_id: int, now: datetime, until: datetime) -> Claimed | None:
    """Lease the row until `until` and read what its message needs; None if someone else
    holds it or it is no longer pending."""
    claimed = connection.execute(
        _CLAIM, {"row_id": row_id, "now": now, "until": until}
    ).one_or_none()
    if claimed is None:
        return None
    incident = connection.execute(
        sa.select(_incidents).where(_incidents.c.id == claimed.incident_id)
    ).one()
    event = connection.execute(sa.select(_events).where(_events.c.id == claimed.event_id)).one()
    opening_data = connection.scalar(
        sa.select(_events.c.data)
        .where(_events.c.incident_id == claimed.incident_id, _events.c.kind == EventKind.opened)
        .order_by(_events.c.id)
        .limit(1)
    )
    root = connection.execute(
        sa.select(_roots.c.channel, _roots.c.ts).where(_roots.c.incident_id == claimed.incident_id)
    ).one_or_none()
    return Claimed(
        id=row_id,
        incident=IncidentRead.model_validate(incident),
        event=IncidentEventRead.model_validate(event),
        opening_data=opening_data,
        root=Root(root.channel, root.ts) if root is not None else None,
    )


def save_root(connection: Connection, *, incident_id: int, root: Root, now: datetime) -> None:
    """Remember the incident's root message, replacing one posted before (a fresh root after
    the first could not be posted, or a repost in the at-least-once window)."""
    connection.execute(sa.delete(_roots).where(_roots.c.incident_id == incident_id))
    connection.execute(
        sa.insert(_roots),
        [{"incident_id": incident_id, "channel": root.channel, "ts": root.ts, "posted_at": now}],
    )


def _finish(connection: Connection, row_id: int, **values: Any) -> None:
    connection.execute(
        sa.update(OUTBOX)
        .where(OUTBOX.c.id == row_id)
        .values(claimed_until=None, attempts=OUTBOX.c.attempts + 1, **values)
    )


def mark_sent(
    connection: Connection, *, row_id: int, now: datetime, silence_id: int | None = None
) -> None:
    """Record the row as sent; `silence_id`: a silence let only its silent root edit through."""
    _finish(
        connection,
        row_id,
        status=OutboxStatus.sent,
        sent_at=now,
        last_error=None,
        silence_id=silence_id,
    )


def mark_failed(connection: Connection, *, row_id: int, reason: str) -> None:
    _finish(connection, row_id, status=OutboxStatus.failed, last_error=reason)


def retry_later(connection: Connection, *, row_id: int, not_before: datetime, reason: str) -> None:
    """Give the claim back; the row is due again at `not_before`."""
    _finish(connection, row_id, not_before=not_before, last_error=reason)


def mark_skipped(
    connection: Connection,
    *,
    row_id: int,
    reason: str,
    now: datetime,
    silence_id: int | None = None,
) -> bool:
    """Skip a pending, unclaimed row (`silence_id`: the silence that muted it); False if
    another dispatcher holds or finished it."""
    result = connection.execute(
        sa.update(OUTBOX)
        .where(OUTBOX.c.id == row_id, _pending(OUTBOX), _unclaimed(OUTBOX))
        .values(status=OutboxStatus.skipped, last_error=reason, silence_id=silence_id),
        {"now": now},
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest: datetime | None


def backlog(connection: Connection) -> Backlog:
    """How many rows wait to be sent, and since when the oldest of them."""
    row = connection.execute(
        sa.select(sa.func.count(), sa.func.min(OUTBOX.c.created_at)).where(_pending(OUTBOX))
    ).one()
    return Backlog(pending=row[0], oldest=row[1])
