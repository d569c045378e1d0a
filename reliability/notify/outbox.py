"""Writing to the outbox: one row per timeline event that Slack should hear about.

Called by the incident service inside the transaction that records the event, so the row
commits (or rolls back) with it: a notification is never lost to a crash between the two,
and never sent for an event that did not happen. `INSERT` with `entry()` rows runs as one
executemany for callers that record events in batches; `insert_from_events` writes the rows
in the very statement that inserts the events (PostgreSQL's data-modifying WITH).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from reliability.db import UTCDateTime
from reliability.notify.models import OutboxRow, OutboxStatus

OUTBOX = cast(sa.Table, OutboxRow.__table__)
INSERT = sa.insert(OUTBOX)
# The wall clock at writing, for `insert_from_events`.
AT = sa.bindparam("outbox_at_", type_=UTCDateTime())


def entry(*, incident_id: int, event_id: int, kind: str, now: datetime) -> dict[str, Any]:
    """The parameters of one outbox row for `INSERT`; due at once.

    `now` is the wall clock at writing, not the event's own time: an alert replayed hours
    late is still news, and the dispatcher's age checks measure how long the row waited.
    """
    return {
        "incident_id": incident_id,
        "event_id": event_id,
        "kind": kind,
        "created_at": now,
        "status": OutboxStatus.pending,
        "attempts": 0,
        "not_before": now,
    }


def enqueue(executor: Session | Connection, *, incident_id: int, event_id: int, kind: str) -> None:
    """Add a pending row for event `event_id` of incident `incident_id`; does not commit."""
    now = datetime.now(UTC)
    executor.execute(
        INSERT, [entry(incident_id=incident_id, event_id=event_id, kind=kind, now=now)]
    )


def insert_from_events(events: sa.FromClause) -> sa.Insert:
    """An INSERT of one pending row per row of `events`, a selectable (typically the CTE of
    an ``INSERT INTO incident_events ... RETURNING id, incident_id, kind``) with columns
    `id`, `incident_id` and `kind`. Bind `outbox_at_` (`AT`) to the wall clock."""
    pending = sa.literal(OutboxStatus.pending, OUTBOX.c.status.type)
    rows = sa.select(
        events.c.incident_id, events.c.id, events.c.kind, AT, pending, sa.literal(0), AT
    )
    columns = ["incident_id", "event_id", "kind", "created_at", "status", "attempts"]
    return sa.insert(OUTBOX).from_select([*columns, "not_before"], rows)
