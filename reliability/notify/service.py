"""Outbox database work for the dispatcher: find due rows, claim one, record how it went.

Every function takes a Connection whose transaction the caller owns. Claims are a
compare-and-set UPDATE on `claimed_until` (a lease), which serialises two dispatchers on
SQLite and PostgreSQL alike: exactly one of them sees its UPDATE change the row. Rows are
kept apart by notifier: a dispatcher reads only the rows, and roots, of the notifiers it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from reliability.db import UTCDateTime
from reliability.incidents.models import (
    EventKind,
    Incident,
    IncidentEvent,
    IncidentEventRead,
    IncidentRead,
    IncidentStatus,
)
from reliability.notify.base import Root
from reliability.notify.models import HandledInteraction, NotificationRoot, OutboxStatus
from reliability.notify.outbox import OUTBOX

_incidents = cast(sa.Table, Incident.__table__)
_events = cast(sa.Table, IncidentEvent.__table__)
_roots = cast(sa.Table, NotificationRoot.__table__)
_handled = cast(sa.Table, HandledInteraction.__table__)
_NOW = sa.bindparam("now", type_=UTCDateTime())
_NOTIFIERS = sa.bindparam("notifiers", expanding=True)


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
    notifier: str
    kind: str
    severity: str
    labels: dict[str, str]
    incident_status: IncidentStatus
    resolved_at: datetime | None
    # Where this notifier posted the incident's root message; None while nothing is posted.
    root_destination: str | None
    # A claim on it ran out with no outcome recorded: its dispatcher stopped (was killed)
    # mid-send, so what that claim posted may be out there already.
    claim_expired: bool


@dataclass(frozen=True)
class Claimed:
    """A claimed row and everything its message is rendered from, read in one transaction."""

    id: int
    notifier: str
    incident: IncidentRead
    event: IncidentEventRead
    opening_data: dict[str, Any] | None
    root: Root | None
    # Claimed again after an earlier claim ran out unrecorded (`Candidate.claim_expired`);
    # `created_at`: when the row was written, before anything could be sent for it.
    reclaimed: bool
    created_at: datetime


_queued = OUTBOX.alias("queued")
_HEAD = (
    sa.select(sa.func.min(_queued.c.id))
    .where(
        _queued.c.incident_id == OUTBOX.c.incident_id,
        _queued.c.notifier == OUTBOX.c.notifier,
        _pending(_queued),
    )
    .scalar_subquery()
)
_CANDIDATES = (
    sa.select(
        OUTBOX.c.id,
        OUTBOX.c.incident_id,
        OUTBOX.c.notifier,
        OUTBOX.c.kind,
        _incidents.c.severity,
        _incidents.c.labels,
        _incidents.c.status.label("incident_status"),
        _incidents.c.resolved_at,
        _roots.c.destination.label("root_destination"),
        OUTBOX.c.claimed_until,
    )
    .join(_incidents, _incidents.c.id == OUTBOX.c.incident_id)
    .outerjoin(
        _roots,
        sa.and_(
            _roots.c.incident_id == OUTBOX.c.incident_id, _roots.c.notifier == OUTBOX.c.notifier
        ),
    )
    # Only the oldest pending row of each incident and notifier, and only while no one holds
    # it: the next row waits until the one before it is sent, failed or skipped.
    .where(_pending(OUTBOX), OUTBOX.c.id == _HEAD, OUTBOX.c.not_before <= _NOW)
    .where(OUTBOX.c.notifier.in_(_NOTIFIERS))
    .where(_unclaimed(OUTBOX))
    .order_by(OUTBOX.c.id)
    .limit(sa.bindparam("limit"))
)
_CLAIM = (
    sa.update(OUTBOX)
    .where(OUTBOX.c.id == sa.bindparam("row_id"), _pending(OUTBOX))
    .values(claimed_until=sa.bindparam("until", type_=UTCDateTime()))
    .returning(OUTBOX.c.event_id, OUTBOX.c.incident_id, OUTBOX.c.notifier, OUTBOX.c.created_at)
)
# A row never claimed or whose claims all ended recorded, and one whose claim ran out: the
# claim succeeds only in the state the caller saw, so `Claimed.reclaimed` is never wrong.
_CLAIM_FREE = _CLAIM.where(OUTBOX.c.claimed_until.is_(None))
_CLAIM_EXPIRED = _CLAIM.where(OUTBOX.c.claimed_until < _NOW)


def due(
    connection: Connection, *, notifiers: Sequence[str], now: datetime, limit: int
) -> list[Candidate]:
    """Up to `limit` rows of these notifiers that may be sent now, oldest first, at most one
    per incident and notifier."""
    rows = connection.execute(
        _CANDIDATES, {"now": now, "limit": limit, "notifiers": list(notifiers)}
    )
    return [
        Candidate(
            id=row.id,
            incident_id=row.incident_id,
            notifier=row.notifier,
            kind=row.kind,
            severity=row.severity.value,
            labels=row.labels or {},
            incident_status=row.incident_status,
            resolved_at=row.resolved_at,
            root_destination=row.root_destination,
            claim_expired=row.claimed_until is not None,
        )
        for row in rows
    ]


def claim(
    connection: Connection,
    *,
    row_id: int,
    now: datetime,
    until: datetime,
    expired: bool = False,
) -> Claimed | None:
    """Lease the row until `until` and read what its message needs; None if someone else
    holds it, it is no longer pending, or it is not in the state `expired` says (an earlier
    claim ran out unrecorded, as `Candidate.claim_expired` read it)."""
    statement = _CLAIM_EXPIRED if expired else _CLAIM_FREE
    claimed = connection.execute(
        statement, {"row_id": row_id, "now": now, "until": until}
    ).one_or_none()
    if claimed is None:
        return None
    incident = connection.execute(
        sa.select(_incidents).where(_incidents.c.id == claimed.incident_id)
    ).one()
    event = connection.execute(sa.select(_events).where(_events.c.id == claimed.event_id)).one()
    opening_data = opening_event_data(connection, incident_id=claimed.incident_id)
    root = connection.execute(
        sa.select(_roots.c.destination, _roots.c.ref).where(
            _roots.c.incident_id == claimed.incident_id, _roots.c.notifier == claimed.notifier
        )
    ).one_or_none()
    return Claimed(
        id=row_id,
        notifier=claimed.notifier,
        incident=IncidentRead.model_validate(incident),
        event=IncidentEventRead.model_validate(event),
        opening_data=opening_data,
        root=Root(root.destination, root.ref) if root is not None else None,
        reclaimed=expired,
        created_at=claimed.created_at,
    )


def save_root(
    connection: Connection, *, incident_id: int, notifier: str, root: Root, now: datetime
) -> None:
    """Remember where the notifier posted the incident's root message, replacing one posted
    before (a fresh root after the first could not be posted, or a repost in the
    at-least-once window)."""
    connection.execute(
        sa.delete(_roots).where(_roots.c.incident_id == incident_id, _roots.c.notifier == notifier)
    )
    connection.execute(
        sa.insert(_roots),
        [
            {
                "incident_id": incident_id,
                "notifier": notifier,
                "destination": root.destination,
                "ref": root.ref,
                "posted_at": now,
            }
        ],
    )


def _finish(connection: Connection, row_id: int, **values: Any) -> None:
    connection.execute(
        sa.update(OUTBOX)
        .where(OUTBOX.c.id == row_id)
        .values(claimed_until=None, attempts=OUTBOX.c.attempts + 1, **values)
    )


def mark_sent(
    connection: Connection,
    *,
    row_id: int,
    now: datetime,
    silence_id: int | None = None,
    maintenance_id: int | None = None,
) -> None:
    """Record the row as sent; `silence_id` / `maintenance_id`: a silence or a maintenance
    window let only its silent root edit through."""
    _finish(
        connection,
        row_id,
        status=OutboxStatus.sent,
        sent_at=now,
        last_error=None,
        silence_id=silence_id,
        maintenance_id=maintenance_id,
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
    maintenance_id: int | None = None,
) -> bool:
    """Skip a pending, unclaimed row (`silence_id`, `maintenance_id`: the silence or the
    maintenance window that held it); False if another dispatcher holds or finished it."""
    result = connection.execute(
        sa.update(OUTBOX)
        .where(OUTBOX.c.id == row_id, _pending(OUTBOX), _unclaimed(OUTBOX))
        .values(
            status=OutboxStatus.skipped,
            last_error=reason,
            silence_id=silence_id,
            maintenance_id=maintenance_id,
        ),
        {"now": now},
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest: datetime | None


def backlog(connection: Connection, *, notifiers: Sequence[str]) -> Backlog:
    """How many rows of these notifiers wait to be sent, and since when the oldest of them."""
    row = connection.execute(
        sa.select(sa.func.count(), sa.func.min(OUTBOX.c.created_at)).where(
            _pending(OUTBOX), OUTBOX.c.notifier.in_(list(notifiers))
        )
    ).one()
    return Backlog(pending=row[0], oldest=row[1])


@dataclass(frozen=True)
class HeldBack:
    """An unresolved incident whose latest notification a silence or a maintenance window
    held back (the one that did; either may be None)."""

    incident_id: int
    labels: dict[str, str]
    silence_id: int | None
    maintenance_id: int | None


# The newest event's rows are the incident's newest rows (every event has one per notifier);
# found through the events' incident index, as the outbox has none over all its rows.
_NEWEST_EVENT = (
    sa.select(sa.func.max(_events.c.id))
    .where(_events.c.incident_id == _incidents.c.id)
    .correlate(_incidents)
    .scalar_subquery()
)
_HELD_BACK = (
    sa.select(_incidents.c.id, _incidents.c.labels, OUTBOX.c.silence_id, OUTBOX.c.maintenance_id)
    .select_from(_incidents)
    .join(OUTBOX, OUTBOX.c.event_id == _NEWEST_EVENT)
    .where(
        _incidents.c.status != IncidentStatus.resolved,
        sa.or_(OUTBOX.c.silence_id.is_not(None), OUTBOX.c.maintenance_id.is_not(None)),
    )
    .order_by(_incidents.c.id, OUTBOX.c.id)
)


def held_back(executor: Connection | Session, *, incident_id: int | None = None) -> list[HeldBack]:
    """The unresolved incidents (or this one) whose latest notification a silence or a
    maintenance window held back (for any notifier), oldest incident first."""
    statement = _HELD_BACK
    if incident_id is not None:
        statement = statement.where(_incidents.c.id == incident_id)
    found: dict[int, HeldBack] = {}
    for row in executor.execute(statement):
        found.setdefault(
            row.id, HeldBack(row.id, row.labels or {}, row.silence_id, row.maintenance_id)
        )
    return list(found.values())


def release(connection: Connection, *, notifier: str, now: datetime) -> int:
    """Make the notifier's waiting rows due now (its condition cleared); how many."""
    result = connection.execute(
        sa.update(OUTBOX)
        .where(OUTBOX.c.notifier == notifier, _pending(OUTBOX), OUTBOX.c.not_before > _NOW)
        .values(not_before=_NOW),
        {"now": now},
    )
    return result.rowcount


def opening_event_data(
    connection: Connection | Session, *, incident_id: int
) -> dict[str, Any] | None:
    """The data of the incident's first `opened` event (where its suggested runbook is)."""
    return connection.scalar(
        sa.select(_events.c.data)
        .where(_events.c.incident_id == incident_id, _events.c.kind == EventKind.opened)
        .order_by(_events.c.id)
        .limit(1)
    )


_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def claim_interaction(
    session: Session, *, key: str, action: str, incident_id: int | None, user: str, now: datetime
) -> bool:
    """Record that the click `key` is acted on now; False when it already was (a retried
    delivery). Call it in the transaction of the action: a rollback frees the key again.
    A concurrent duplicate waits for the first to commit, then finds the row."""
    insert = _INSERTS[session.get_bind().dialect.name](_handled)
    values = {"key": key, "action": action, "incident_id": incident_id, "user": user, "at": now}
    # RETURNING, not rowcount: psycopg reports no rowcount for a single INSERT here.
    statement = insert.values(values).on_conflict_do_nothing().returning(_handled.c.key)
    return session.execute(statement).scalar() is not None


# Slack retries a delivery within minutes (HTTP: 3 times over about 5 minutes; Socket Mode:
# until acked); a day is far beyond any retry, and short enough that the table stays small.
INTERACTION_RETENTION = timedelta(hours=24)
PRUNE_BATCH = 500


def prune_interactions(
    connection: Connection, *, before: datetime, limit: int = PRUNE_BATCH
) -> int:
    """Delete up to `limit` rows of `handled_interactions` older than `before`, oldest
    first; how many. A small batch per statement holds few row locks for a short time:
    call it again, each in its own transaction, while it returns `limit`."""
    oldest = (
        sa.select(_handled.c.key)
        .where(_handled.c.at < before)
        .order_by(_handled.c.at)
        .limit(limit)
        .scalar_subquery()
    )
    return connection.execute(sa.delete(_handled).where(_handled.c.key.in_(oldest))).rowcount
