"""The incident service: dedupe, flap damping, ack/resolve, notes and the timeline.

Every test runs on SQLite and PostgreSQL (see tests/conftest.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from reliability import db
from reliability.incidents import service
from reliability.incidents.models import (
    Incident,
    IncidentEventRead,
    IncidentRead,
    IncidentStatus,
    Severity,
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def fire(session, fingerprint="gpu-xid:node1:0", *, at=T0, **overrides):
    """One firing of a signal, with test defaults for what the test does not care about."""
    fields = {
        "title": "XID 79 on node1 GPU 0",
        "severity": Severity.critical,
        "source": "rule",
        "labels": {"node": "node1", "gpu": "0"},
        **overrides,
    }
    return service.open_or_update(session, fingerprint=fingerprint, at=at, **fields)


def kinds(session, incident_id):
    return [event.kind for event in service.events(session, incident_id=incident_id)]


def count_incidents(session):
    return session.scalar(sa.select(sa.func.count()).select_from(Incident))


# Opening and deduplication


def test_a_first_firing_opens_an_incident(session):
    upsert = fire(session, summary="GPU fell off the bus")
    session.commit()

    incident = upsert.incident
    assert upsert.action == "opened"
    assert incident.status == IncidentStatus.open
    assert (incident.severity, incident.source) == (Severity.critical, "rule")
    assert incident.labels == {"node": "node1", "gpu": "0"}
    assert incident.summary == "GPU fell off the bus"
    assert incident.started_at == incident.last_seen_at == T0
    assert (incident.occurrences, incident.reopen_count) == (1, 0)
    assert kinds(session, incident.id) == ["opened"]


def test_the_same_fingerprint_twice_is_one_incident_seen_twice(session):
    first = fire(session)
    second = fire(session, at=T0 + timedelta(minutes=1))
    session.commit()

    assert second.action == "refired"
    assert second.incident.id == first.incident.id
    assert second.incident.occurrences == 2
    assert second.incident.started_at == T0
    assert second.incident.last_seen_at == T0 + timedelta(minutes=1)
    assert count_incidents(session) == 1
    assert kinds(session, first.incident.id) == ["opened", "refired"]


def test_different_fingerprints_are_different_incidents(session):
    a = fire(session, "disk-full:node1")
    b = fire(session, "disk-full:node2")
    assert a.incident.id != b.incident.id
    assert (a.action, b.action) == ("opened", "opened")


def test_an_incident_loaded_before_a_refire_shows_the_refire(session):
    loaded = service.get(session, incident_id=fire(session).incident.id)
    fire(session, severity="warning", at=T0 + timedelta(minutes=1))
    assert service.get(session, incident_id=loaded.id) is loaded
    assert (loaded.occurrences, loaded.severity) == (2, Severity.warning)


def test_a_refire_updates_title_and_severity_and_keeps_the_summary_unless_given(session):
    fire(session, severity="warning", title="GPU hot", summary="82 C")
    escalated = fire(session, severity="critical", title="GPU very hot", at=T0 + timedelta(1))
    session.commit()

    incident = escalated.incident
    assert (incident.severity, incident.title, incident.summary) == (
        Severity.critical,
        "GPU very hot",
        "82 C",
    )
    timeline = service.events(session, incident_id=incident.id)
    assert [event.data["severity"] for event in timeline] == ["warning", "critical"]

    assert fire(session, summary="95 C").incident.summary == "95 C"


def test_last_seen_never_moves_backwards_for_late_firings(session):
    fire(session, at=T0)
    fire(session, at=T0 + timedelta(minutes=5))
    late = fire(session, at=T0 + timedelta(minutes=2))
    assert late.incident.last_seen_at == T0 + timedelta(minutes=5)
    assert late.incident.occurrences == 3


def test_a_refire_of_an_acknowledged_incident_keeps_it_acknowledged(session):
    opened = fire(session)
    service.acknowledge(session, incident_id=opened.incident.id, by="alice", at=T0)
    refired = fire(session, at=T0 + timedelta(minutes=1))
    assert refired.action == "refired"
    assert refired.incident.status == IncidentStatus.acknowledged
    assert refired.incident.acknowledged_by == "alice"


# Flap damping


def test_a_firing_soon_after_resolution_reopens_the_same_incident(session):
    opened = fire(session)
    incident_id = opened.incident.id
    service.acknowledge(session, incident_id=incident_id, by="alice", at=T0)
    service.resolve(session, incident_id=incident_id, by="alice", at=T0 + timedelta(minutes=1))

    again = fire(session, at=T0 + timedelta(minutes=6))
    session.commit()

    assert again.action == "reopened"
    incident = again.incident
    assert incident.id == incident_id
    assert incident.status == IncidentStatus.open
    assert (incident.resolved_at, incident.resolved_by) == (None, None)
    # A new episode needs a new acknowledgement.
    assert (incident.acknowledged_at, incident.acknowledged_by) == (None, None)
    assert (incident.reopen_count, incident.occurrences) == (1, 2)
    assert count_incidents(session) == 1
    assert kinds(session, incident_id) == ["opened", "acknowledged", "resolved", "reopened"]


def test_a_firing_after_the_reopen_window_opens_a_new_incident(session):
    old = fire(session).incident
    service.resolve(session, incident_id=old.id, by="alice", at=T0)

    new = fire(session, at=T0 + timedelta(minutes=11))
    session.commit()

    assert new.action == "opened"
    assert new.incident.id != old.id
    assert service.get(session, incident_id=old.id).status == IncidentStatus.resolved
    assert count_incidents(session) == 2


def test_a_zero_reopen_window_never_reopens(session):
    old = fire(session).incident
    service.resolve(session, incident_id=old.id, by="alice", at=T0)
    new = fire(session, at=T0, reopen_window=timedelta(0))
    assert (new.action, new.incident.id != old.id) == ("opened", True)


def test_a_late_firing_refires_the_open_incident_rather_than_reopen_a_resolved_one(session):
    old = fire(session).incident
    service.resolve(session, incident_id=old.id, by="alice", at=T0 + timedelta(minutes=1))
    new = fire(session, at=T0 + timedelta(minutes=20)).incident

    # Within the reopen window of `old`, but `new` is open: the firing belongs to it.
    late = fire(session, at=T0 + timedelta(minutes=5))
    assert (late.action, late.incident.id, late.incident.occurrences) == ("refired", new.id, 2)
    assert service.get(session, incident_id=old.id).status == IncidentStatus.resolved


# Acknowledge and resolve


def test_acknowledge_records_who_and_when(session):
    incident = fire(session).incident
    acked = service.acknowledge(
        session, incident_id=incident.id, by="alice", at=T0 + timedelta(minutes=2)
    ).incident
    session.commit()

    assert acked.status == IncidentStatus.acknowledged
    assert (acked.acknowledged_by, acked.acknowledged_at) == ("alice", T0 + timedelta(minutes=2))
    (event,) = service.events(session, incident_id=incident.id)[1:]
    assert (event.kind, event.actor) == ("acknowledged", "alice")


def test_acknowledging_twice_says_who_already_did(session):
    incident = fire(session).incident
    service.acknowledge(session, incident_id=incident.id, by="alice", at=T0)
    with pytest.raises(service.InvalidTransition, match="already acknowledged by alice"):
        service.acknowledge(session, incident_id=incident.id, by="bob")


def test_a_resolved_incident_cannot_be_acknowledged(session):
    incident = fire(session).incident
    service.resolve(session, incident_id=incident.id, by="alice")
    with pytest.raises(service.InvalidTransition, match=r"is resolved .*only an open incident"):
        service.acknowledge(session, incident_id=incident.id, by="bob")


def test_an_acknowledgement_past_the_timeout_expires_once_and_reopens_the_incident(session):
    incident_id = fire(session).incident.id
    service.acknowledge(session, incident_id=incident_id, by="alice", at=T0)
    timeout = timedelta(minutes=30)

    assert service.expire_acknowledgements(session, now=T0 + timeout / 2, timeout=timeout) == []
    [event] = service.expire_acknowledgements(session, now=T0 + timeout, timeout=timeout)
    assert service.expire_acknowledgements(session, now=T0 + 2 * timeout, timeout=timeout) == []
    session.commit()

    assert (event.kind, event.at, event.actor) == ("ack_expired", T0 + timeout, None)
    assert event.data == {"acknowledged_by": "alice", "acknowledged_at": T0.isoformat()}
    incident = service.get(session, incident_id=incident_id)
    assert incident.status == IncidentStatus.open
    assert (incident.acknowledged_by, incident.acknowledged_at) == (None, None)
    # Open again, so anyone can take it over.
    service.acknowledge(session, incident_id=incident_id, by="bob", at=T0 + 2 * timeout)


def test_a_zero_ack_timeout_never_expires_an_acknowledgement(session):
    incident_id = fire(session).incident.id
    service.acknowledge(session, incident_id=incident_id, by="alice", at=T0)

    later = T0 + timedelta(days=30)
    assert service.expire_acknowledgements(session, now=later, timeout=timedelta(0)) == []


def test_resolve_records_who_when_and_the_note(session):
    incident = fire(session).incident
    resolved = service.resolve(
        session, incident_id=incident.id, by="bob", note="rebooted node1", at=T0 + timedelta(1)
    ).incident
    session.commit()

    assert resolved.status == IncidentStatus.resolved
    assert (resolved.resolved_by, resolved.resolved_at) == ("bob", T0 + timedelta(1))
    event = service.events(session, incident_id=incident.id)[-1]
    assert (event.kind, event.actor, event.message) == ("resolved", "bob", "rebooted node1")
    assert service.get_open_by_fingerprint(session, fingerprint=incident.fingerprint) is None


def test_resolving_twice_is_an_invalid_transition(session):
    incident = fire(session).incident
    service.resolve(session, incident_id=incident.id, by="bob", at=T0)
    with pytest.raises(
        service.InvalidTransition, match="already resolved by bob at 2025-06-01 12:00:00Z"
    ):
        service.resolve(session, incident_id=incident.id, by="alice")


def test_acting_on_an_unknown_incident_is_not_found(session):
    for act in (
        lambda: service.get(session, incident_id=999),
        lambda: service.acknowledge(session, incident_id=999, by="alice"),
        lambda: service.resolve(session, incident_id=999, by="alice"),
        lambda: service.add_note(session, incident_id=999, by="alice", text="hi"),
    ):
        with pytest.raises(service.IncidentNotFound, match="incident 999 not found"):
            act()
    assert issubclass(service.IncidentNotFound, service.IncidentError)
    assert issubclass(service.InvalidTransition, service.IncidentError)


def test_resolve_fingerprint_resolves_the_open_incident_of_a_cleared_signal(session):
    incident = fire(session).incident
    resolved = service.resolve_fingerprint(
        session, fingerprint=incident.fingerprint, by="alertmanager", at=T0 + timedelta(1)
    )
    assert resolved is not None
    assert (resolved.incident.id, resolved.incident.status, resolved.incident.resolved_by) == (
        incident.id,
        IncidentStatus.resolved,
        "alertmanager",
    )
    # Clearing again, or clearing a signal that never fired, is not an error.
    assert service.resolve_fingerprint(session, fingerprint=incident.fingerprint, by="am") is None
    assert service.resolve_fingerprint(session, fingerprint="never-fired", by="am") is None


# Notes, timeline, listing


def test_a_note_goes_on_the_timeline_even_after_resolution(session):
    incident = fire(session).incident
    service.resolve(session, incident_id=incident.id, by="bob", at=T0)
    note = service.add_note(session, incident_id=incident.id, by="bob", text="root cause: PSU")
    session.commit()

    assert (note.kind, note.actor, note.message) == ("note", "bob", "root cause: PSU")
    assert kinds(session, incident.id) == ["opened", "resolved", "note"]
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        service.add_note(session, incident_id=incident.id, by="bob", text="  ")


def test_the_timeline_is_oldest_first(session):
    incident = fire(session, at=T0).incident
    service.resolve(session, incident_id=incident.id, by="bob", at=T0 + timedelta(minutes=3))
    fire(session, at=T0 + timedelta(minutes=4))
    service.acknowledge(session, incident_id=incident.id, by="al", at=T0 + timedelta(minutes=5))
    fire(session, at=T0 + timedelta(minutes=1, seconds=30))  # late, but recorded when it came
    session.commit()

    timeline = service.events(session, incident_id=incident.id)
    assert [event.at for event in timeline] == sorted(event.at for event in timeline)
    assert [event.kind for event in timeline] == [
        "opened",
        "refired",
        "resolved",
        "reopened",
        "acknowledged",
    ]


def test_list_incidents_is_most_recently_seen_first_and_filters_by_status(session):
    a = fire(session, "a", at=T0).incident
    b = fire(session, "b", at=T0 + timedelta(minutes=1)).incident
    c = fire(session, "c", at=T0 + timedelta(minutes=2)).incident
    fire(session, "a", at=T0 + timedelta(minutes=3))
    service.resolve(session, incident_id=c.id, by="bob")
    session.commit()

    listed = service.list_incidents(session)
    assert [incident.id for incident in listed] == [a.id, c.id, b.id]
    open_ones = service.list_incidents(session, status=IncidentStatus.open)
    assert [incident.id for incident in open_ones] == [a.id, b.id]
    assert [incident.id for incident in service.list_incidents(session, limit=1)] == [a.id]


def test_get_open_by_fingerprint(session):
    incident = fire(session, "x").incident
    assert service.get_open_by_fingerprint(session, fingerprint="x").id == incident.id
    assert service.get_open_by_fingerprint(session, fingerprint="y") is None


def test_read_shapes_serialise_incidents_and_events_to_json(session):
    incident = service.get(session, incident_id=fire(session).incident.id)
    event = service.events(session, incident_id=incident.id)[0]

    shown = IncidentRead.model_validate(incident).model_dump(mode="json")
    assert shown["severity"] == "critical"
    assert shown["status"] == "open"
    assert shown["started_at"] == "2025-06-01T12:00:00Z"
    assert IncidentEventRead.model_validate(event).model_dump(mode="json")["kind"] == "opened"


# Batches


def firing(fingerprint="gpu-xid:node1:0", *, at=T0, **overrides):
    fields = {"title": "XID 79 on node1 GPU 0", "severity": Severity.critical, "source": "rule"}
    return service.Firing(fingerprint=fingerprint, at=at, **{**fields, **overrides})


def test_a_batch_does_what_its_firings_would_do_one_by_one_in_order(session):
    flapped = fire(session, "flappy").incident
    service.resolve(session, incident_id=flapped.id, by="alice", at=T0)
    ongoing = fire(session, "ongoing").incident

    upserts = service.open_or_update_many(
        session,
        firings=[
            firing("new", summary="first"),
            firing("ongoing", at=T0 + timedelta(minutes=1)),
            firing("new", severity="warning", at=T0 + timedelta(minutes=2)),
            firing("flappy", at=T0 + timedelta(minutes=3)),
        ],
    )
    session.commit()

    assert [u.action for u in upserts] == ["opened", "refired", "refired", "reopened"]
    assert [u.incident.fingerprint for u in upserts] == ["new", "ongoing", "new", "flappy"]
    new = upserts[2].incident
    assert (new.id, new.occurrences, new.severity) == (upserts[0].incident.id, 2, "warning")
    assert new.summary == "first"
    assert upserts[1].incident.id == ongoing.id
    assert (upserts[3].incident.id, upserts[3].incident.reopen_count) == (flapped.id, 1)
    assert kinds(session, new.id) == ["opened", "refired"]
    assert kinds(session, flapped.id) == ["opened", "resolved", "reopened"]


def test_a_batch_takes_the_reopen_window(session):
    old = fire(session).incident
    service.resolve(session, incident_id=old.id, by="alice", at=T0)
    (upsert,) = service.open_or_update_many(
        session, firings=[firing(at=T0 + timedelta(minutes=5))], reopen_window=timedelta(0)
    )
    assert (upsert.action, upsert.incident.id != old.id) == ("opened", True)


def test_a_batch_is_part_of_the_callers_transaction(session):
    service.open_or_update_many(session, firings=[firing("a"), firing("b")])
    session.rollback()
    assert count_incidents(session) == 0


def test_a_batch_with_an_invalid_firing_writes_nothing(session):
    with pytest.raises(ValueError, match="fingerprint must be a non-empty string"):
        service.open_or_update_many(session, firings=[firing("a"), firing(" ")])
    with pytest.raises(ValueError, match="naive datetime"):
        service.open_or_update_many(
            session, firings=[firing("a"), firing(at=T0.replace(tzinfo=None))]
        )
    session.commit()
    assert count_incidents(session) == 0


def test_an_empty_batch_does_nothing(session):
    assert service.open_or_update_many(session, firings=[]) == []


# Transactions, time and integrity


def test_the_caller_owns_the_transaction(session):
    fire(session)
    session.rollback()
    assert count_incidents(session) == 0


def test_times_are_aware_utc_whatever_zone_they_came_in(session):
    cest = timezone(timedelta(hours=2))
    opened = fire(session, at=datetime(2025, 6, 1, 14, 0, tzinfo=cest))
    session.commit()
    session.expunge_all()

    loaded = service.get(session, incident_id=opened.incident.id)
    assert loaded.started_at == T0
    assert loaded.started_at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="naive datetime"):
        fire(session, at=datetime(2025, 6, 1, 12, 0))


def test_the_database_refuses_a_second_unresolved_incident_per_fingerprint(session):
    fire(session, "dup")
    session.commit()
    duplicate = Incident(
        fingerprint="dup",
        title="t",
        severity=Severity.info,
        status=IncidentStatus.acknowledged,
        source="manual",
        labels={},
        started_at=T0,
        last_seen_at=T0,
    )
    session.add(duplicate)
    with pytest.raises(IntegrityError):
        session.flush()


# Concurrency

WORKERS = 8
FINGERPRINTS = [f"concurrent:{i}" for i in range(4)]
ROUNDS = 15


def _hammer(engine, barrier, fingerprints, rounds):
    """One worker: its own session (and connection) per call, each call its own transaction."""
    factory = db.session_factory(engine)
    barrier.wait(timeout=30)
    for _ in range(rounds):
        for fingerprint in fingerprints:
            with factory.begin() as session:
                fire(session, fingerprint, at=datetime.now(UTC))


def _run_workers(engine, fingerprints, rounds):
    barrier = threading.Barrier(WORKERS)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [
            pool.submit(_hammer, engine, barrier, fingerprints, rounds) for _ in range(WORKERS)
        ]
        for future in futures:
            future.result(timeout=120)


@pytest.mark.timeout(180)
def test_concurrent_writers_make_exactly_one_incident_per_fingerprint(engine, session):
    _run_workers(engine, FINGERPRINTS, ROUNDS)

    calls = WORKERS * ROUNDS
    for fingerprint in FINGERPRINTS:
        (incident,) = session.scalars(
            sa.select(Incident).where(Incident.fingerprint == fingerprint)
        ).all()
        assert incident.status == IncidentStatus.open
        assert incident.occurrences == calls
        # Workers take `at` before they queue for the lock, so only the counts are certain.
        assert Counter(kinds(session, incident.id)) == {"opened": 1, "refired": calls - 1}


@pytest.mark.timeout(180)
def test_concurrent_writers_reopen_a_recently_resolved_incident_once(engine, session):
    incident = fire(session, "flappy", at=datetime.now(UTC)).incident
    service.resolve(session, incident_id=incident.id, by="alertmanager")
    session.commit()

    _run_workers(engine, ["flappy"], rounds=3)

    session.expire_all()
    (only,) = session.scalars(sa.select(Incident).where(Incident.fingerprint == "flappy")).all()
    assert (only.id, only.status, only.reopen_count) == (incident.id, IncidentStatus.open, 1)
    assert only.occurrences == 1 + WORKERS * 3


@pytest.mark.timeout(60)
def test_a_firing_that_waits_for_a_concurrent_resolve_reopens_the_incident(engine, session):
    incident = fire(session, "racing", at=datetime.now(UTC)).incident
    session.commit()

    with db.session_factory(engine).begin() as resolving:
        # Holds the incident (row lock on PostgreSQL, write lock on SQLite) until it commits.
        service.resolve(resolving, incident_id=incident.id, by="alertmanager")
        with ThreadPoolExecutor(1) as pool:
            firing_ = pool.submit(_fire_in_own_transaction, engine, "racing")
            time.sleep(0.3)
            assert not firing_.done()
            resolving.commit()
            upsert = firing_.result(timeout=30)

    assert (upsert.action, upsert.incident.id) == ("reopened", incident.id)
    assert count_incidents(session) == 1


def _fire_in_own_transaction(engine, fingerprint):
    with db.session_factory(engine).begin() as other:
        return fire(other, fingerprint, at=datetime.now(UTC))


def _hammer_batches(engine, barrier, fingerprints, rounds, worker):
    """One worker: a batch of every fingerprint per transaction, odd workers in reverse order."""
    factory = db.session_factory(engine)
    ordered = fingerprints[::-1] if worker % 2 else fingerprints
    barrier.wait(timeout=30)
    for _ in range(rounds):
        with factory.begin() as session:
            now = datetime.now(UTC)
            service.open_or_update_many(session, firings=[firing(fp, at=now) for fp in ordered])


@pytest.mark.timeout(180)
def test_concurrent_batches_in_any_order_neither_deadlock_nor_duplicate(engine, session):
    barrier = threading.Barrier(WORKERS)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [
            pool.submit(_hammer_batches, engine, barrier, FINGERPRINTS, ROUNDS, worker)
            for worker in range(WORKERS)
        ]
        for future in futures:
            future.result(timeout=120)

    for fingerprint in FINGERPRINTS:
        (incident,) = session.scalars(
            sa.select(Incident).where(Incident.fingerprint == fingerprint)
        ).all()
        assert incident.occurrences == WORKERS * ROUNDS
        assert Counter(kinds(session, incident.id)) == {
            "opened": 1,
            "refired": WORKERS * ROUNDS - 1,
        }
