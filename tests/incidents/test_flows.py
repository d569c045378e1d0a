"""The incident flows: the service records, the flows also notify, in the same transaction,
one outbox row per event and notifier; and the layers only point down.

Every database test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import ast
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from reliability.incidents import flows, service, silences
from reliability.incidents.models import Incident, IncidentEvent
from reliability.notify.models import OutboxRow
from reliability.notify.registry import NOTIFIERS

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PACKAGE = Path(service.__file__).parents[1]


def notified(session) -> list[tuple[int, str]]:
    """(event id, notifier) of every outbox row, in order."""
    return [
        (row.event_id, row.notifier)
        for row in session.scalars(sa.select(OutboxRow).order_by(OutboxRow.id))
    ]


def every_event(session) -> list[tuple[int, str]]:
    events = session.scalars(sa.select(IncidentEvent).order_by(IncidentEvent.id))
    return [(event.id, name) for event in events for name in NOTIFIERS]


def fire(changes, session, at):
    return changes.open_or_update(
        session,
        fingerprint="hot",
        title="gpu-3 is hot",
        severity="critical",
        source="rule",
        labels={"node": "gpu-3"},
        at=at,
    )


def test_the_service_records_without_notifying(session):
    upsert = fire(service, session, T0)
    service.acknowledge(session, incident_id=upsert.incident.id, by="al", at=T0)
    service.add_note(session, incident_id=upsert.incident.id, by="al", text="looking")
    service.resolve(session, incident_id=upsert.incident.id, by="al", at=T0)
    session.commit()

    assert len(service.events(session, incident_id=upsert.incident.id)) == 4
    assert notified(session) == []


def test_each_event_a_flow_records_is_notified_once_per_notifier_in_its_transaction(session):
    first = fire(flows, session, T0)
    incident_id = first.incident.id
    fire(flows, session, T0 + timedelta(minutes=1))
    flows.acknowledge(session, incident_id=incident_id, by="al", at=T0 + timedelta(minutes=2))
    flows.expire_acknowledgements(
        session, now=T0 + timedelta(hours=1), timeout=timedelta(minutes=30)
    )
    flows.add_note(session, incident_id=incident_id, by="al", text="reseating")
    flows.resolve(session, incident_id=incident_id, by="al", at=T0 + timedelta(hours=2))
    fire(flows, session, T0 + timedelta(hours=2, minutes=1))  # reopened
    flows.resolve_fingerprint(session, fingerprint="hot", by="rule", at=T0 + timedelta(hours=3))
    session.rollback()
    assert notified(session) == []  # rolled back together with the events

    first = fire(flows, session, T0)
    flows.open_or_update_many(
        session,
        firings=[
            service.Firing("b", "b", "warning", "rule"),
            service.Firing("a", "a", "warning", "rule"),
            service.Firing("b", "b", "warning", "rule"),
        ],
    )
    flows.acknowledge(session, incident_id=first.incident.id, by="al", at=T0)
    flows.tick(session, now=T0 + timedelta(hours=1), ack_timeout=timedelta(minutes=30))
    session.commit()

    kinds = [e.kind for e in service.events(session, incident_id=first.incident.id)]
    assert kinds == ["opened", "acknowledged", "ack_expired"]
    assert notified(session) == every_event(session)


def written(session) -> tuple[list[tuple], ...]:
    """Every incident, event and outbox row, with ids as ranks (PostgreSQL's sequences do not
    roll back) and without the outbox's wall-clock times."""
    incidents, events, rows = (
        session.execute(sa.select(model.__table__).order_by(model.id)).all()
        for model in (Incident, IncidentEvent, OutboxRow)
    )
    incident = {row.id: rank for rank, row in enumerate(incidents)}
    event = {row.id: rank for rank, row in enumerate(events)}
    return (
        [(incident[row.id], *row[1:]) for row in incidents],
        [(event[row.id], incident[row.incident_id], *row[2:]) for row in events],
        [(incident[r.incident_id], event[r.event_id], r.kind, r.notifier, r.status) for r in rows],
    )


def test_a_batch_writes_what_its_firings_one_at_a_time_would(session):
    def firing(fingerprint, minutes, **fields):
        fields = {"title": f"{fingerprint} fired", "severity": "warning", **fields}
        at = T0 + timedelta(minutes=minutes)
        return service.Firing(fingerprint, source="rule", labels={"node": "n1"}, at=at, **fields)

    def earlier_incidents():
        for fingerprint in ("ongoing", "acked", "flappy", "old"):
            flows.open_or_update(session, **asdict(firing(fingerprint, -60)))
        acked, flappy, old = (
            session.scalar(sa.select(Incident.id).filter_by(fingerprint=f))
            for f in ("acked", "flappy", "old")
        )
        flows.acknowledge(session, incident_id=acked, by="alice", at=T0 - timedelta(minutes=30))
        flows.resolve(session, incident_id=flappy, by="alice", at=T0 - timedelta(minutes=5))
        flows.resolve(session, incident_id=old, by="alice", at=T0 - timedelta(minutes=50))

    # New ones (one fired twice, escalating), repeats of unresolved ones, a reopen (resolved
    # within the window, then fired again in the batch) and a new episode of an old one.
    firings = [
        firing("zeta", 1, summary="first"),
        firing("ongoing", 2, severity="critical", data={"value": "91"}),
        firing("new", 3),
        firing("flappy", 4),
        firing("zeta", 5, severity="critical"),
        firing("acked", 6, summary="still"),
        firing("old", 7),
        firing("flappy", 8),
        firing("ongoing", 1),  # out of order: last_seen_at stays
    ]
    earlier_incidents()
    # A batch applies its firings in fingerprint order (each fingerprint's in the order given).
    in_order = sorted(range(len(firings)), key=lambda i: firings[i].fingerprint)
    one_at_a_time = {i: flows.open_or_update(session, **asdict(firings[i])) for i in in_order}
    expected = written(session)
    session.rollback()

    earlier_incidents()
    batched = flows.open_or_update_many(session, firings=firings)

    assert written(session) == expected
    assert [(u.action, u.incident.occurrences) for u in batched] == [
        (one_at_a_time[i].action, one_at_a_time[i].incident.occurrences)
        for i in range(len(firings))
    ]
    assert [u.action for u in batched] == [
        *("opened", "refired", "opened", "reopened", "refired"),
        *("refired", "opened", "refired", "refired"),
    ]


def test_a_silence_that_ends_releases_through_the_flow_with_its_notification(session):
    created = silences.create(
        session,
        matchers=[silences.parse_matcher("node=gpu-3")],
        duration=timedelta(hours=1),
        by="al",
        now=T0,
    )
    upsert = fire(flows, session, T0)
    session.execute(
        sa.update(OutboxRow).values(status="skipped", silence_id=created.id, last_error="muted")
    )
    session.commit()

    silence, released = flows.expire_silence(
        session, silence_id=created.id, now=T0 + timedelta(minutes=5)
    )
    session.commit()

    assert silence.expired_at == T0 + timedelta(minutes=5)
    assert [(e.incident_id, e.kind) for e in released] == [(upsert.incident.id, "silence_ended")]
    assert notified(session) == every_event(session)
    assert flows.release_ended_holds(session, now=T0 + timedelta(minutes=6)) == []


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _reaching(module: str, prefixes: tuple[str, ...]) -> set[str]:
    path = PACKAGE / (module.replace(".", "/") + ".py")
    return {name for name in _imports(path) if name.startswith(prefixes)}


def test_the_incidents_domain_imports_no_notify_and_no_flows():
    for module in ("incidents/models", "incidents/service", "incidents/silences"):
        reached = _reaching(module, ("reliability.notify", "reliability.incidents.flows"))
        assert reached == set(), f"{module} imports {reached}"


def test_notify_imports_no_sibling_domain_and_no_flows():
    for path in sorted((PACKAGE / "notify").glob("*.py")):
        reached = {
            name
            for name in _imports(path)
            if name.startswith(("reliability.dashboards", "reliability.runbooks"))
            or name.endswith(".flows")
            or ".flows." in name
        }
        assert reached == set(), f"notify/{path.name} imports {reached}"
