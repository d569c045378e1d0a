"""Incident database work: open or dedupe, reopen, acknowledge, resolve, notes, timeline.

Every function takes the session first and keyword-only arguments after it, and none commits:
the caller owns the transaction, so it can write an outbox row in the same one. The only
transaction control here is the SAVEPOINT that lets `open_or_update` survive a concurrent
writer opening the same fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from reliability.db import UTCDateTime
from reliability.incidents.models import (
    EventKind,
    Incident,
    IncidentEvent,
    IncidentRead,
    IncidentStatus,
    Severity,
)

UpsertAction = Literal["opened", "refired", "reopened"]

# Each retry means another writer changed this fingerprint's incident between two of our
# statements; more than a few in a row means something is wrong, not merely busy.
_MAX_ATTEMPTS = 5


class IncidentError(Exception):
    """Base of the incident errors a caller can report to the user."""


class IncidentNotFound(IncidentError):
    def __init__(self, incident_id: int) -> None:
        self.incident_id = incident_id
        super().__init__(f"incident {incident_id} not found")


class InvalidTransition(IncidentError):
    """The incident's status does not allow the requested change (e.g. ack of a resolved one)."""


@dataclass(frozen=True)
class Upsert:
    """What `open_or_update` did: the incident as it now is, and whether it was opened,
    refired or reopened."""

    incident: IncidentRead
    action: UpsertAction


# open_or_update is the hot path (every alert firing), so it runs prebuilt Core statements:
# no ORM loading, and each statement's cache key and compiled form are computed only once.
_incidents = cast(sa.Table, Incident.__table__)
_events = cast(sa.Table, IncidentEvent.__table__)
_c = _incidents.c
_AT = sa.bindparam("at_", type_=UTCDateTime())
_FIRING = {
    "title": sa.bindparam("title_", type_=sa.Text()),
    "severity": sa.bindparam("severity_", type_=_c.severity.type),
    # A firing without a summary keeps the one the incident has.
    "summary": sa.func.coalesce(sa.bindparam("summary_", type_=sa.Text()), _c.summary),
    "occurrences": _c.occurrences + 1,
    # Alerts can arrive out of order (webhook retries): last_seen_at never moves backwards.
    "last_seen_at": sa.case((_c.last_seen_at < _AT, _AT), else_=_c.last_seen_at),
}
# One atomic UPDATE .. RETURNING: no read-modify-write window, one round trip.
_REFIRE = (
    sa.update(_incidents)
    .where(_c.fingerprint == sa.bindparam("fingerprint_"), _c.status != IncidentStatus.resolved)
    .values(_FIRING)
    .returning(*_c)
)
_RECENTLY_RESOLVED = (
    sa.select(_c.id)
    .where(
        _c.fingerprint == sa.bindparam("fingerprint_"),
        _c.status == IncidentStatus.resolved,
        _c.resolved_at > sa.bindparam("cutoff_", type_=UTCDateTime()),
    )
    .order_by(_c.resolved_at.desc())
    .limit(1)
)
_REOPEN = (
    sa.update(_incidents)
    # Status guard: a concurrent writer may have reopened it already.
    .where(_c.id == sa.bindparam("id_"), _c.status == IncidentStatus.resolved)
    .values(
        {
            **_FIRING,
            "status": IncidentStatus.open,
            "resolved_at": None,
            "resolved_by": None,
            # The earlier acknowledgement was for the earlier episode; this one needs its own.
            "acknowledged_at": None,
            "acknowledged_by": None,
            "reopen_count": _c.reopen_count + 1,
        }
    )
    .returning(*_c)
)
_OPEN = sa.insert(_incidents).returning(*_c)
_EVENT = sa.insert(_events)


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
) -> Upsert:
    """Record that the signal `fingerprint` fired at `at` (default now); return what happened.

    - An unresolved incident with this fingerprint is refired: occurrences + 1, last_seen_at
      advanced, title/severity (and summary, when given) updated, a `refired` event.
    - Else one resolved less than `reopen_window` before `at` is reopened (flap damping):
      status open, ack and resolution cleared, reopen_count + 1, a `reopened` event.
    - Else a new incident is opened with an `opened` event.

    Safe under concurrency: writers racing on one fingerprint end with one incident.
    The incident comes back as a snapshot (`IncidentRead`); an `Incident` of it already
    loaded in the session is expired, so it reloads with the new values.
    """
    _require_text(fingerprint=fingerprint, title=title, source=source)
    at = _utc(at)
    firing = {
        "fingerprint_": fingerprint,
        "title_": title,
        "severity_": Severity(severity),
        "summary_": summary,
        "at_": at,
    }
    for _ in range(_MAX_ATTEMPTS):
        row = session.execute(_REFIRE, firing).one_or_none()
        action: UpsertAction = "refired"
        if row is None:
            resolved_id = session.scalar(
                _RECENTLY_RESOLVED, {"fingerprint_": fingerprint, "cutoff_": at - reopen_window}
            )
            if resolved_id is not None:
                row, action = _reopen(session, {**firing, "id_": resolved_id}), "reopened"
            else:
                row, action = _open(session, firing, source=source, labels=labels), "opened"
        # None: another writer got there first; the next attempt refires what it wrote.
        if row is not None:
            incident = IncidentRead.model_validate(row)
            _expire(session, incident.id)
            session.execute(
                _EVENT,
                {
                    "incident_id": incident.id,
                    "at": at,
                    "kind": action,
                    "actor": source,
                    "message": None,
                    # The severity of each firing, so an escalation shows on the timeline.
                    "data": {"severity": incident.severity.value},
                },
            )
            return Upsert(incident, action)
    raise IncidentError(
        f"could not open or update the incident for {fingerprint!r}: "
        f"it changed concurrently {_MAX_ATTEMPTS} times in a row"
    )


def _reopen(session: Session, params: dict[str, Any]) -> sa.Row[Any] | None:
    try:
        # A concurrent writer may have opened a new incident for this fingerprint meanwhile;
        # the unique index then rejects the reopen, and the savepoint keeps our transaction.
        with session.begin_nested():
            return session.execute(_REOPEN, params).one_or_none()
    except IntegrityError:
        return None


def _open(
    session: Session, firing: dict[str, Any], *, source: str, labels: dict[str, str] | None
) -> sa.Row[Any] | None:
    values = {
        "fingerprint": firing["fingerprint_"],
        "title": firing["title_"],
        "severity": firing["severity_"],
        "summary": firing["summary_"],
        "status": IncidentStatus.open,
        "source": source,
        "labels": labels or {},
        "started_at": firing["at_"],
        "last_seen_at": firing["at_"],
        "occurrences": 1,
        "reopen_count": 0,
    }
    try:
        # The unique index over unresolved fingerprints is the arbiter between racing writers;
        # the savepoint lets the loser roll back just this insert and refire the winner's.
        with session.begin_nested():
            return session.execute(_OPEN, values).one()
    except IntegrityError:
        return None


def _expire(session: Session, incident_id: int) -> None:
    # Core statements bypass the identity map: make a loaded Incident reload its new values.
    instance = session.identity_map.get(identity_key(Incident, incident_id))
    if instance is not None:
        session.expire(instance)


def get(session: Session, *, incident_id: int) -> Incident:
    """The incident with this id; IncidentNotFound if there is none."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def get_open_by_fingerprint(session: Session, *, fingerprint: str) -> Incident | None:
    """The unresolved (open or acknowledged) incident for `fingerprint`, if any."""
    return session.scalars(
        sa.select(Incident).where(
            Incident.fingerprint == fingerprint, Incident.status != IncidentStatus.resolved
        )
    ).one_or_none()


def list_incidents(
    session: Session, *, status: IncidentStatus | None = None, limit: int = 100
) -> list[Incident]:
    """Up to `limit` incidents, optionally of one status, most recently seen first."""
    statement = sa.select(Incident)
    if status is not None:
        statement = statement.where(Incident.status == status)
    statement = statement.order_by(Incident.last_seen_at.desc(), Incident.id.desc()).limit(limit)
    return list(session.scalars(statement))


def events(session: Session, *, incident_id: int) -> list[IncidentEvent]:
    """The incident's timeline, oldest first (empty for an unknown incident)."""
    return list(
        session.scalars(
            sa.select(IncidentEvent)
            .where(IncidentEvent.incident_id == incident_id)
            .order_by(IncidentEvent.at, IncidentEvent.id)
        )
    )


def acknowledge(
    session: Session, *, incident_id: int, by: str, at: datetime | None = None
) -> Incident:
    """Mark an open incident as being handled by `by`.

    InvalidTransition if it is already acknowledged or resolved.
    """
    _require_text(by=by)
    at = _utc(at)
    incident = _locked(session, incident_id)
    if incident.status == IncidentStatus.acknowledged:
        raise InvalidTransition(
            f"incident {incident_id} is already acknowledged "
            f"by {incident.acknowledged_by} at {_when(incident.acknowledged_at)}"
        )
    if incident.status == IncidentStatus.resolved:
        raise InvalidTransition(
            f"incident {incident_id} is resolved (by {incident.resolved_by} at "
            f"{_when(incident.resolved_at)}); only an open incident can be acknowledged"
        )
    incident.status = IncidentStatus.acknowledged
    incident.acknowledged_at = at
    incident.acknowledged_by = by
    _record(session, incident, EventKind.acknowledged, at=at, actor=by)
    return incident


def resolve(
    session: Session,
    *,
    incident_id: int,
    by: str,
    note: str | None = None,
    at: datetime | None = None,
) -> Incident:
    """Resolve an open or acknowledged incident; `note` goes on the timeline entry.

    InvalidTransition if it is already resolved.
    """
    _require_text(by=by)
    return _resolve(session, _locked(session, incident_id), by=by, note=note, at=_utc(at))


def resolve_fingerprint(
    session: Session, *, fingerprint: str, by: str, at: datetime | None = None
) -> Incident | None:
    """Resolve the unresolved incident for a signal that cleared; None if there is none."""
    _require_text(by=by)
    incident = session.scalars(
        sa.select(Incident)
        .where(Incident.fingerprint == fingerprint, Incident.status != IncidentStatus.resolved)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if incident is None:
        return None
    return _resolve(session, incident, by=by, note=None, at=_utc(at))


def add_note(session: Session, *, incident_id: int, by: str, text: str) -> IncidentEvent:
    """Append a note by `by` to the incident's timeline (resolved incidents included)."""
    _require_text(by=by, text=text)
    incident = get(session, incident_id=incident_id)
    return _record(session, incident, EventKind.note, at=_utc(None), actor=by, message=text)


def _resolve(
    session: Session, incident: Incident, *, by: str, note: str | None, at: datetime
) -> Incident:
    if incident.status == IncidentStatus.resolved:
        raise InvalidTransition(
            f"incident {incident.id} is already resolved "
            f"by {incident.resolved_by} at {_when(incident.resolved_at)}"
        )
    incident.status = IncidentStatus.resolved
    incident.resolved_at = at
    incident.resolved_by = by
    _record(session, incident, EventKind.resolved, at=at, actor=by, message=note)
    return incident


def _locked(session: Session, incident_id: int) -> Incident:
    # Row lock (PostgreSQL) so two people acting at once see each other's change; SQLite's
    # BEGIN IMMEDIATE already serialises writers.
    incident = session.get(Incident, incident_id, with_for_update=True, populate_existing=True)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def _record(
    session: Session,
    incident: Incident,
    kind: EventKind,
    *,
    at: datetime,
    actor: str | None = None,
    message: str | None = None,
) -> IncidentEvent:
    return session.scalars(
        sa.insert(IncidentEvent).returning(IncidentEvent),
        [
            {
                "incident_id": incident.id,
                "at": at,
                "kind": kind.value,
                "actor": actor,
                "message": message,
                "data": None,
            }
        ],
    ).one()


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at.isoformat()}: pass a timezone-aware one")
    return at.astimezone(UTC)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%SZ") if at is not None else "an unknown time"


def _require_text(**fields: str) -> None:
    # Empty identities would silently merge unrelated signals or hide who acted.
    for name, value in fields.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string")
