"""Incident database work: open or dedupe, reopen, acknowledge (and its expiry), resolve, notes,
timeline.

Every function takes the session first and keyword-only arguments after it, and none commits:
the caller owns the transaction. Every change returns the timeline event(s) it recorded, so
that a flow (`incidents/flows.py`) can write their notifications in the same transaction;
this module knows nothing of notifications. The only transaction control here is the
SAVEPOINT that lets `open_or_update`'s reopen survive a concurrent writer opening the same
fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from reliability.db import UTCDateTime
from reliability.incidents.models import (
    UNRESOLVED,
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
    """What `open_or_update` did: the incident as it now is, whether it was opened, refired
    or reopened, and the id of the timeline event that records it (of kind `action`)."""

    incident: IncidentRead
    action: UpsertAction
    event_id: int


@dataclass(frozen=True)
class Change:
    """What an acknowledge or a resolve did: the incident as it now is, and the timeline
    event that records the change."""

    incident: Incident
    event: IncidentEvent


@dataclass(frozen=True)
class Cleared:
    """What `resolve_fingerprint` did: the incident as it now is (a snapshot, as in `Upsert`)
    and the id of the `resolved` event that records it."""

    incident: IncidentRead
    event_id: int


@dataclass(frozen=True)
class Firing:
    """One firing of a signal, as `open_or_update_many` takes it (see `open_or_update`)."""

    fingerprint: str
    title: str
    severity: Severity | str
    source: str
    labels: dict[str, str] | None = None
    summary: str | None = None
    at: datetime | None = None
    data: dict[str, Any] | None = None


# open_or_update is the hot path (every alert firing), so it runs prebuilt Core statements on
# the session's connection: no ORM loading, each statement compiled once per dialect.
_incidents = cast(sa.Table, Incident.__table__)
_events = cast(sa.Table, IncidentEvent.__table__)
_c = _incidents.c
_INCIDENT_MAPPER = sa.inspect(Incident)
_AT = sa.bindparam("at_", type_=UTCDateTime())
_SOURCE = sa.bindparam("source_", type_=_c.source.type)
_FIRING = {
    "title": sa.bindparam("title_", type_=sa.Text()),
    "severity": sa.bindparam("severity_", type_=_c.severity.type),
    # A firing without a summary keeps the one the incident has.
    "summary": sa.func.coalesce(sa.bindparam("summary_", type_=sa.Text()), _c.summary),
    "occurrences": _c.occurrences + 1,
    # Alerts can arrive out of order (webhook retries): last_seen_at never moves backwards.
    "last_seen_at": sa.case((_c.last_seen_at < _AT, _AT), else_=_c.last_seen_at),
}
_OF_FINGERPRINT = _c.fingerprint == sa.bindparam("fingerprint_", type_=_c.fingerprint.type)
# The status in the SQL text, not a bound value: SQLite re-prepares a statement that could use
# a partial index on every execution when the index's predicate column is compared with a
# parameter (about 0.1 ms each), and PostgreSQL's generic plans cannot prove the predicate.
_RESOLVED = sa.literal_column(f"'{IncidentStatus.resolved.value}'", _c.status.type)
_UNRESOLVED = _c.status != _RESOLVED
_RECENTLY_RESOLVED = sa.and_(
    _c.status == _RESOLVED,
    _c.resolved_at > sa.bindparam("cutoff_", type_=UTCDateTime()),
)


# One atomic UPDATE .. RETURNING: no read-modify-write window. It waits for a concurrent
# change to the unresolved incident (say, its resolution) and then judges the changed row.
_REFIRE_ROW = sa.update(_incidents).where(_OF_FINGERPRINT, _UNRESOLVED).values(_FIRING)
_REFIRE = _REFIRE_ROW.returning(*_c, sa.literal("refired").label("action"))


def _open_row(insert: Callable[[sa.Table], Any]) -> sa.Insert:
    """Open a new incident unless one is unresolved or was resolved recently (no row then).

    Both are judged by the statement's snapshot: an incident that a concurrent writer resolves
    meanwhile still prevents the insert, and the reopen that follows, seeing it resolved,
    reopens it.
    """
    new = {
        "fingerprint": sa.bindparam("fingerprint_", type_=_c.fingerprint.type),
        "title": _FIRING["title"],
        "severity": _FIRING["severity"],
        "summary": sa.bindparam("summary_", type_=sa.Text()),
        "status": sa.literal(IncidentStatus.open, _c.status.type),
        "source": _SOURCE,
        "labels": sa.bindparam("labels_", type_=_c.labels.type),
        "started_at": _AT,
        "last_seen_at": _AT,
        "occurrences": sa.literal(1),
        "reopen_count": sa.literal(0),
    }
    return (
        insert(_incidents)
        .from_select(
            list(new),
            sa.select(*new.values()).where(
                ~sa.exists().where(_OF_FINGERPRINT, sa.or_(_UNRESOLVED, _RECENTLY_RESOLVED))
            ),
        )
        # The unique partial index arbitrates between racing writers: the loser inserts nothing,
        # without an error (so without a savepoint), and refires the winner's on its next try.
        .on_conflict_do_nothing(index_elements=[_c.fingerprint], index_where=UNRESOLVED)
    )


def _open(insert: Callable[[sa.Table], Any]) -> sa.Insert:
    """`_open_row`, returning the incident it opened."""
    return _open_row(insert).returning(*_c, sa.literal("opened").label("action"))


_REOPEN = (
    sa.update(_incidents)
    .where(
        _c.id
        == sa.select(_c.id)
        .where(_OF_FINGERPRINT, _RECENTLY_RESOLVED)
        .order_by(_c.resolved_at.desc())
        .limit(1)
        .scalar_subquery(),
        # Status guard: a concurrent writer may have reopened it already.
        _c.status == _RESOLVED,
    )
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
    .returning(*_c, sa.literal("reopened").label("action"))
)
_CLEAR = (
    sa.update(_incidents)
    .where(_OF_FINGERPRINT, _UNRESOLVED)
    .values(
        status=_RESOLVED,
        resolved_at=_AT,
        resolved_by=sa.bindparam("by_", type_=_c.resolved_by.type),
    )
    .returning(*_c)
)
_AMONG = _c.fingerprint.in_(sa.bindparam("fingerprints_", expanding=True))
_UNRESOLVED_AMONG = sa.select(_c.fingerprint).where(_UNRESOLVED, _AMONG)
_UNRESOLVED_ROWS_AMONG = sa.select(*_c).where(_UNRESOLVED, _AMONG)
# Timeline events by Core: a batch's (SQLite) in one executemany, their ids in order for the
# Upserts; a resolve's by fingerprint.
_EVENT = sa.insert(_events).returning(_events.c.id, sort_by_parameter_order=True)


def _recording_event(*statements: sa.Insert | sa.Update) -> sa.Select[Any]:
    """One statement (PostgreSQL) that runs these, inserts the timeline event of the row any
    of them returned, and returns that row with the event's id (`event_id`)."""
    changed = sa.union_all(*(sa.select(s.cte(f"s{i}")) for i, s in enumerate(statements)))
    changed = changed.cte("changed")
    event = (
        sa.insert(_events)
        .from_select(
            ["incident_id", "at", "kind", "actor", "data"],
            sa.select(
                changed.c.id,
                _AT,
                changed.c.action,
                _SOURCE,
                sa.func.jsonb_build_object("severity", changed.c.severity).op("||")(
                    sa.bindparam("data_", type_=postgresql.JSONB())
                ),
            ),
        )
        .returning(_events.c.id, _events.c.incident_id)
        .cte("event")
    )
    return sa.select(changed, event.c.id.label("event_id")).join(
        event, event.c.incident_id == changed.c.id
    )


@dataclass(frozen=True)
class _Statements:
    """open_or_update's statements on one dialect. `refire_or_open` are run in turn until one
    returns the incident; `records_events`: they insert the timeline event themselves;
    `refire_many`, `open_many` (SQLite): the refire and the open without RETURNING, for an
    executemany of a batch (see `_apply_first_firings`)."""

    refire_or_open: tuple[sa.Executable, ...]
    reopen: sa.Executable
    records_events: bool
    refire_many: sa.Executable | None = None
    open_many: sa.Executable | None = None


_STATEMENTS = {
    # One round trip: the refire and the open are exclusive (the open's snapshot sees any
    # incident the refire could change), so they run side by side in one statement.
    "postgresql": _Statements(
        refire_or_open=(_recording_event(_REFIRE, _open(postgresql.insert)),),
        reopen=_recording_event(_REOPEN),
        records_events=True,
    ),
    # SQLite has no INSERT in WITH; its statements are in-process calls, not round trips.
    "sqlite": _Statements(
        refire_or_open=(_REFIRE, _open(sqlite.insert)),
        reopen=_REOPEN,
        records_events=False,
        refire_many=_REFIRE_ROW,
        open_many=_open_row(sqlite.insert),
    ),
}


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
    """Record that the signal `fingerprint` fired at `at` (default now); return what happened.

    - An unresolved incident with this fingerprint is refired: occurrences + 1, last_seen_at
      advanced, title/severity (and summary, when given) updated, a `refired` event.
    - Else one resolved less than `reopen_window` before `at` is reopened (flap damping):
      status open, ack and resolution cleared, reopen_count + 1, a `reopened` event.
    - Else a new incident is opened with an `opened` event.

    The event (its `data`: the firing's severity and `data`, e.g. the value and the runbook
    a rule suggests) is written in the same transaction; `Upsert.event_id` names it.

    Safe under concurrency: writers racing on one fingerprint end with one incident.
    The incident comes back as a snapshot (`IncidentRead`); an `Incident` of it already
    loaded in the session is expired, so it reloads with the new values.
    """
    firing = Firing(fingerprint, title, severity, source, labels, summary, at, data)
    (upsert,) = open_or_update_many(session, firings=[firing], reopen_window=reopen_window)
    return upsert


def open_or_update_many(
    session: Session,
    *,
    firings: Iterable[Firing],
    reopen_window: timedelta = timedelta(minutes=10),
) -> list[Upsert]:
    """`open_or_update` for each firing, in the caller's transaction; one Upsert per firing, in
    the order given.

    For a batch (a rule evaluation cycle, an Alertmanager webhook): one commit for them all.
    The firings of one fingerprint apply in the order given, so a repeat is a refire. Every
    firing is checked before any is written: a ValueError leaves the transaction untouched.
    """
    checked = [_firing_params(firing, reopen_window) for firing in firings]
    connection = session.connection()
    statements = _STATEMENTS[connection.dialect.name]
    # Fingerprints apply in sorted order (a stable sort keeps each one's firings in order), so
    # concurrent batches wait for each other's rows in one order and cannot deadlock.
    order = sorted(range(len(checked)), key=lambda i: checked[i]["fingerprint_"])
    upserts: dict[int, Upsert] = {}
    if len(checked) > 1 and statements.refire_many is not None:
        upserts = _apply_first_firings(session, connection, statements, checked, order)
    for i in order:  # the rest one at a time, each fingerprint's firings in order
        if i not in upserts:
            upserts[i] = _open_or_update(session, connection, statements, checked[i])
    if order and not statements.records_events:
        # The batch's timeline events in one executemany, in the order they happened.
        ids = connection.execute(
            _EVENT,
            [
                {
                    "incident_id": upserts[i].incident.id,
                    "at": checked[i]["at_"],
                    "kind": upserts[i].action,
                    "actor": checked[i]["source_"],
                    "message": None,
                    # The severity of each firing, so an escalation shows on the timeline.
                    "data": {"severity": upserts[i].incident.severity.value, **checked[i]["data_"]},
                }
                for i in order
            ],
        ).scalars()
        for i, event_id in zip(order, ids, strict=True):
            upserts[i] = replace(upserts[i], event_id=event_id)
    return [upserts[i] for i in range(len(checked))]


def _firing_params(firing: Firing, reopen_window: timedelta) -> dict[str, Any]:
    _require_text(fingerprint=firing.fingerprint, title=firing.title, source=firing.source)
    at = _utc(firing.at)
    return {
        "fingerprint_": firing.fingerprint,
        "title_": firing.title,
        "severity_": Severity(firing.severity),
        "summary_": firing.summary,
        "source_": firing.source,
        "labels_": firing.labels or {},
        "at_": at,
        "cutoff_": at - reopen_window,
        "data_": firing.data or {},
    }


def _apply_first_firings(
    session: Session,
    connection: sa.Connection,
    statements: _Statements,
    checked: list[dict[str, Any]],
    order: list[int],
) -> dict[int, Upsert]:
    """SQLite, a batch: the first firing of each fingerprint, as statements per batch rather
    than per firing; the Upserts of those it applied, by index (without event ids).

    Which fingerprints are unresolved is read once; those are refired and the others opened,
    each by one executemany in fingerprint order (so incidents get the ids one at a time would
    give them), and the rows they left are read once. This is only sound because the
    transaction holds SQLite's one write lock (BEGIN IMMEDIATE) throughout: no other writer
    changes a row between these statements. A first firing that opened nothing (an incident
    resolved within the reopen window) is left to `_open_or_update`, as are repeats.
    """
    firsts: dict[str, int] = {}
    for i in order:
        firsts.setdefault(checked[i]["fingerprint_"], i)
    fingerprints = list(firsts)  # sorted, since `order` is
    unresolved = set(
        connection.execute(_UNRESOLVED_AMONG, {"fingerprints_": fingerprints}).scalars()
    )
    refire = [checked[i] for fingerprint, i in firsts.items() if fingerprint in unresolved]
    new = [checked[i] for fingerprint, i in firsts.items() if fingerprint not in unresolved]
    if refire:
        connection.execute(statements.refire_many, refire)
    if new:
        connection.execute(statements.open_many, new)
    rows = connection.execute(_UNRESOLVED_ROWS_AMONG, {"fingerprints_": fingerprints})
    upserts = {}
    for row in rows:
        incident = IncidentRead.model_validate(row)
        _expire(session, incident.id)
        action: UpsertAction = "refired" if incident.fingerprint in unresolved else "opened"
        upserts[firsts[incident.fingerprint]] = Upsert(incident, action, 0)
    return upserts


def _open_or_update(
    session: Session,
    connection: sa.Connection,
    statements: _Statements,
    params: dict[str, Any],
) -> Upsert:
    for _ in range(_MAX_ATTEMPTS):
        row = _first_row(connection, statements.refire_or_open, params)
        if row is None:
            row = _reopen(session, statements.reopen, params)
        # None: another writer got there first; the next attempt refires what it wrote.
        if row is not None:
            incident = IncidentRead.model_validate(row)
            _expire(session, incident.id)
            # SQLite: the event is written after the batch, which fills in its id.
            event_id = row.event_id if statements.records_events else 0
            return Upsert(incident, row.action, event_id)
    raise IncidentError(
        f"could not open or update the incident for {params['fingerprint_']!r}: "
        f"it changed concurrently {_MAX_ATTEMPTS} times in a row"
    )


def _first_row(
    connection: sa.Connection, statements: tuple[sa.Executable, ...], params: dict[str, Any]
) -> sa.Row[Any] | None:
    for statement in statements:
        row = connection.execute(statement, params).one_or_none()
        if row is not None:
            return row
    return None


def _reopen(session: Session, reopen: sa.Executable, params: dict[str, Any]) -> sa.Row[Any] | None:
    try:
        # A concurrent writer may have opened a new incident for this fingerprint meanwhile;
        # the unique index then rejects the reopen, and the savepoint keeps our transaction.
        with session.begin_nested():
            return session.execute(reopen, params).one_or_none()
    except IntegrityError:
        return None


def _expire(session: Session, incident_id: int) -> None:
    # Core statements bypass the identity map: make a loaded Incident reload its new values.
    instance = session.identity_map.get(
        _INCIDENT_MAPPER.identity_key_from_primary_key((incident_id,))
    )
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
    session: Session,
    *,
    incident_id: int,
    by: str,
    at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> Change:
    """Mark an open incident as being handled by `by`; `data` goes on the timeline entry
    (who `by` is elsewhere, e.g. a Slack user id).

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
    return Change(
        incident,
        record_event(
            session, incident=incident, kind=EventKind.acknowledged, at=at, actor=by, data=data
        ),
    )


def resolve(
    session: Session,
    *,
    incident_id: int,
    by: str,
    note: str | None = None,
    at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> Change:
    """Resolve an open or acknowledged incident; `note` and `data` go on the timeline entry.

    InvalidTransition if it is already resolved.
    """
    _require_text(by=by)
    incident = _locked(session, incident_id)
    return _resolve(session, incident, by=by, note=note, at=_utc(at), data=data)


def resolve_fingerprint(
    session: Session, *, fingerprint: str, by: str, at: datetime | None = None
) -> Cleared | None:
    """Resolve the unresolved incident for a signal that cleared; None if there is none.

    The hot path of every resolved alert, so Core statements like `open_or_update`'s: one
    atomic UPDATE .. RETURNING (on PostgreSQL it waits for a concurrent change to the row and
    judges the changed row), then the `resolved` event. An `Incident` of it already loaded
    in the session is expired, so it reloads with the new values.
    """
    _require_text(by=by)
    at = _utc(at)
    session.flush()  # the caller's pending ORM changes first, as a query would autoflush
    connection = session.connection()
    row = connection.execute(
        _CLEAR, {"fingerprint_": fingerprint, "at_": at, "by_": by}
    ).one_or_none()
    if row is None:
        return None
    _expire(session, row.id)
    (event_id,) = connection.execute(
        _EVENT,
        [
            {
                "incident_id": row.id,
                "at": at,
                "kind": EventKind.resolved.value,
                "actor": by,
                "message": None,
                "data": None,
            }
        ],
    ).scalars()
    return Cleared(IncidentRead.model_validate(row), event_id)


def add_note(session: Session, *, incident_id: int, by: str, text: str) -> IncidentEvent:
    """Append a note by `by` to the incident's timeline (resolved incidents included)."""
    _require_text(by=by, text=text)
    incident = get(session, incident_id=incident_id)
    return record_event(
        session, incident=incident, kind=EventKind.note, at=_utc(None), actor=by, message=text
    )


def expire_acknowledgements(
    session: Session, *, now: datetime, timeout: timedelta
) -> list[IncidentEvent]:
    """End every acknowledgement older than `timeout` whose incident is still unresolved: the
    incident is open again, with an `ack_expired` event saying who acknowledged it and when.

    An acknowledgement promises someone is on it; one left that long without a resolve is
    treated as forgotten (PagerDuty's ack timeout), so on-call is paged again. Each
    acknowledgement expires at most once, since expiring ends it, and acknowledging again
    starts a new clock. The daemon calls this periodically; a zero `timeout` turns it off.
    """
    if timeout <= timedelta(0):
        return []
    now = _utc(now)
    # Locked, and on PostgreSQL re-checked after the lock: one resolved meanwhile is left out.
    stale = session.scalars(
        sa.select(Incident)
        .where(
            Incident.status == IncidentStatus.acknowledged,
            Incident.acknowledged_at <= now - timeout,
        )
        .order_by(Incident.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    return [_expire_acknowledgement(session, incident, now) for incident in stale]


def _expire_acknowledgement(session: Session, incident: Incident, now: datetime) -> IncidentEvent:
    by, since = incident.acknowledged_by, cast(datetime, incident.acknowledged_at)
    incident.status = IncidentStatus.open
    incident.acknowledged_at = None
    incident.acknowledged_by = None
    return record_event(
        session,
        incident=incident,
        kind=EventKind.ack_expired,
        at=now,
        message=f"acknowledged by {by} at {_when(since)} and not resolved since",
        data={"acknowledged_by": by, "acknowledged_at": since.isoformat()},
    )


def _resolve(
    session: Session,
    incident: Incident,
    *,
    by: str,
    note: str | None,
    at: datetime,
    data: dict[str, Any] | None = None,
) -> Change:
    if incident.status == IncidentStatus.resolved:
        raise InvalidTransition(
            f"incident {incident.id} is already resolved "
            f"by {incident.resolved_by} at {_when(incident.resolved_at)}"
        )
    incident.status = IncidentStatus.resolved
    incident.resolved_at = at
    incident.resolved_by = by
    event = record_event(
        session,
        incident=incident,
        kind=EventKind.resolved,
        at=at,
        actor=by,
        message=note,
        data=data,
    )
    return Change(incident, event)


def _locked(session: Session, incident_id: int) -> Incident:
    # Row lock (PostgreSQL) so two people acting at once see each other's change; SQLite's
    # BEGIN IMMEDIATE already serialises writers.
    incident = session.get(Incident, incident_id, with_for_update=True, populate_existing=True)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def record_event(
    session: Session,
    *,
    incident: Incident,
    kind: EventKind,
    at: datetime,
    actor: str | None = None,
    message: str | None = None,
    data: dict[str, Any] | None = None,
) -> IncidentEvent:
    """Append an event to the incident's timeline; the caller (a flow) notifies of it."""
    event = session.scalars(
        sa.insert(IncidentEvent).returning(IncidentEvent),
        [
            {
                "incident_id": incident.id,
                "at": at,
                "kind": kind.value,
                "actor": actor,
                "message": message,
                "data": data,
            }
        ],
    ).one()
    return event


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
