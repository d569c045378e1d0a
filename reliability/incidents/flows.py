"""Incident work that notifies: each function changes incidents through `service` and writes
the outbox rows (`notify/outbox.py`) of the events it recorded, in the caller's transaction.

So a notification exists exactly when its event does, and `service` and `silences` stay
database work on incidents alone. Every caller whose change should reach on-call (the
detection loop, webhook intake, the CLI, runbooks, the daemon's timers) comes through here;
the arguments and results are the service's. None commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from reliability.incidents import service, silences
from reliability.incidents.models import EventKind, Incident, IncidentEvent, Severity, Silence
from reliability.incidents.service import Change, Cleared, Firing, Upsert
from reliability.maintenance import service as maintenance
from reliability.notify import outbox
from reliability.notify import service as notify_service


def open_or_update(
    session: Session,
    *,
    fingerprint: str,
    title: str,
    severity: Severity | str,
    source: str,
    labels: dict[str, str] | None = None,
    summary: str | None = None,
    at: datetime | None = None,
    reopen_window: timedelta = timedelta(minutes=10),
    data: dict[str, Any] | None = None,
) -> Upsert:
    """`service.open_or_update`, notified."""
    firing = Firing(fingerprint, title, severity, source, labels, summary, at, data)
    (upsert,) = open_or_update_many(session, firings=[firing], reopen_window=reopen_window)
    return upsert


def open_or_update_many(
    session: Session,
    *,
    firings: Iterable[Firing],
    reopen_window: timedelta = timedelta(minutes=10),
) -> list[Upsert]:
    """`service.open_or_update_many`, notified: the batch's rows in one statement."""
    upserts = service.open_or_update_many(session, firings=firings, reopen_window=reopen_window)
    notify_upserts(session, upserts)
    return upserts


def notify_upserts(session: Session, upserts: Sequence[Upsert]) -> None:
    """The outbox rows of the events these upserts recorded, in the order they happened
    (for callers that mix upserts with other changes in one transaction)."""
    # Event ids grow in the order the events were written: the order per incident.
    ordered = sorted(upserts, key=lambda u: u.event_id)
    outbox.enqueue(
        session, events=[outbox.Event(u.incident.id, u.event_id, u.action) for u in ordered]
    )


def acknowledge(
    session: Session,
    *,
    incident_id: int,
    by: str,
    at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> Change:
    """`service.acknowledge`, notified."""
    change = service.acknowledge(session, incident_id=incident_id, by=by, at=at, data=data)
    outbox.enqueue(session, events=[change.event])
    return change


def resolve(
    session: Session,
    *,
    incident_id: int,
    by: str,
    note: str | None = None,
    at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> Change:
    """`service.resolve`, notified."""
    change = service.resolve(session, incident_id=incident_id, by=by, note=note, at=at, data=data)
    outbox.enqueue(session, events=[change.event])
    return change


def resolve_fingerprint(
    session: Session, *, fingerprint: str, by: str, at: datetime | None = None
) -> Cleared | None:
    """`service.resolve_fingerprint`, notified."""
    cleared = service.resolve_fingerprint(session, fingerprint=fingerprint, by=by, at=at)
    if cleared is not None:
        event = outbox.Event(cleared.incident.id, cleared.event_id, EventKind.resolved.value)
        outbox.enqueue(session, events=[event])
    return cleared


def add_note(session: Session, *, incident_id: int, by: str, text: str) -> IncidentEvent:
    """`service.add_note`, notified (a reply in the incident's thread)."""
    event = service.add_note(session, incident_id=incident_id, by=by, text=text)
    outbox.enqueue(session, events=[event])
    return event


def ask_approval(
    session: Session, *, incident_id: int, by: str, prompt: str, approval_id: int
) -> IncidentEvent:
    """A runbook's question for the incident's thread, notified (Slack shows it with
    Approve / Reject buttons that carry `approval_id`)."""
    incident = service.get(session, incident_id=incident_id)
    event = service.record_event(
        session,
        incident=incident,
        kind=EventKind.approval_asked,
        at=datetime.now(UTC),
        actor=by,
        message=prompt,
        data={"approval_id": approval_id},
    )
    outbox.enqueue(session, events=[event])
    return event


def expire_acknowledgements(
    session: Session, *, now: datetime, timeout: timedelta
) -> list[IncidentEvent]:
    """`service.expire_acknowledgements`, notified: each `ack_expired` pages again."""
    expired = service.expire_acknowledgements(session, now=now, timeout=timeout)
    outbox.enqueue(session, events=expired)
    return expired


def release_ended_holds(session: Session, *, now: datetime) -> list[IncidentEvent]:
    """Record `maintenance_ended` (held by a maintenance window) or `silence_ended` for each
    unresolved incident whose latest notification a silence or a window held back and which
    none covers any more; its outbox rows tell on-call (its first message, if it opened
    while held).

    Idempotent: the event's own rows are then the incident's latest, and not held back.
    """
    in_force = silences.active(session, now=now)
    windows = maintenance.active(session, now=now)
    released = []
    for held in notify_service.held_back(session):
        if silences.covering(in_force, held.labels) or maintenance.covering(windows, held.labels):
            continue
        incident = session.get(
            Incident, held.incident_id, with_for_update=True, populate_existing=True
        )
        # Checked again under the lock: a concurrent caller may have released it already.
        if incident is None or not notify_service.held_back(session, incident_id=incident.id):
            continue
        if held.maintenance_id is not None:
            what, kind = f"maintenance window {held.maintenance_id}", EventKind.maintenance_ended
            data = {"maintenance_id": held.maintenance_id}
        else:
            what, kind = f"silence {held.silence_id}", EventKind.silence_ended
            data = {"silence_id": held.silence_id}
        released.append(
            service.record_event(
                session,
                incident=incident,
                kind=kind,
                at=now,
                message=f"{what} ended; this incident is still {incident.status}",
                data=data,
            )
        )
    outbox.enqueue(session, events=released)
    return released


def expire_silence(
    session: Session, *, silence_id: int, now: datetime
) -> tuple[Silence, list[IncidentEvent]]:
    """End an active silence now and release, notified, what it held back (`silences.expire`
    and `release_ended_holds`): the silence and the `silence_ended` events."""
    silence = silences.expire(session, silence_id=silence_id, now=now)
    return silence, release_ended_holds(session, now=now)


def tick(session: Session, *, now: datetime, ack_timeout: timedelta) -> list[IncidentEvent]:
    """What time alone changes, notified: acknowledgements older than `ack_timeout` expire
    (`expire_acknowledgements`) and incidents that ended silences or maintenance windows
    held back are released (`release_ended_holds`). The daemon runs it periodically; the
    events come back so it can wake the dispatcher."""
    expired = expire_acknowledgements(session, now=now, timeout=ack_timeout)
    return expired + release_ended_holds(session, now=now)
