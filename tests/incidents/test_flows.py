"""The incident flows: the service records, the flows also notify, in the same transaction,
one outbox row per event and notifier; and the layers only point down.

Every database test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from reliability.incidents import flows, service, silences
from reliability.incidents.models import IncidentEvent
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
