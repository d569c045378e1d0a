"""Writing to the outbox: one row per timeline event and notifier.

Called by the incident flows (`incidents/flows.py`) inside the transaction that records the
events, so the rows commit (or roll back) with them: a notification is never lost to a crash
between the two, and never sent for an event that did not happen. One executemany per call,
so a batch of events (a rule evaluation cycle, a webhook) costs one statement.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from reliability.notify.models import OutboxRow, OutboxStatus
from reliability.notify.registry import NOTIFIERS

OUTBOX = cast(sa.Table, OutboxRow.__table__)
INSERT = sa.insert(OUTBOX)


class Notifiable(Protocol):
    """A timeline event to notify of: an `IncidentEvent`, or an `Event`."""

    @property
    def incident_id(self) -> int: ...
    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...


class Event(NamedTuple):
    """A timeline event known by its id, e.g. from `service.Upsert`."""

    incident_id: int
    id: int
    kind: str


def entry(
    *, incident_id: int, event_id: int, kind: str, notifier: str, now: datetime
) -> dict[str, Any]:
    """The parameters of one outbox row for `INSERT`; due at once.

    `now` is the wall clock at writing, not the event's own time: an alert replayed hours
    late is still news, and the dispatcher's age checks measure how long the row waited.
    """
    return {
        "incident_id": incident_id,
        "event_id": event_id,
        "kind": kind,
        "notifier": notifier,
        "created_at": now,
        "status": OutboxStatus.pending,
        "attempts": 0,
        "not_before": now,
    }


def enqueue(
    executor: Session | Connection,
    *,
    events: Iterable[Notifiable],
    notifiers: Iterable[str] = tuple(NOTIFIERS),
) -> None:
    """Add a pending row for each event (anything with `incident_id`, `id` and `kind`) and
    each notifier, in the order given; does not commit."""
    now = datetime.now(UTC)
    names = list(notifiers)
    rows = [
        entry(incident_id=e.incident_id, event_id=e.id, kind=e.kind, notifier=name, now=now)
        for e in events
        for name in names
    ]
    if rows:
        if isinstance(executor, Session):
            # On the session's connection, its pending changes flushed first (as a query
            # would): a Core INSERT needs none of the ORM's execution path, a hot one here.
            executor.flush()
            executor = executor.connection()
        executor.execute(INSERT, rows)
