"""The Notifier seam: the dispatcher sends only the rows of the notifiers it has, remembers
each one's root apart, and maps a notifier's errors to what happens to the row.

Fake notifiers stand in for a second channel (no second real one exists). Every test runs on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from outbox_helpers import drain, rows
from sqlalchemy.orm import Session

from reliability.incidents import flows, service
from reliability.notify import outbox
from reliability.notify.base import (
    Blocked,
    Notification,
    NotifyError,
    Permanent,
    RateLimited,
    Root,
    Transient,
)
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.models import NotificationRoot, OutboxStatus
from reliability.notify.registry import NOTIFIERS


@dataclass
class FakeNotifier:
    """Records what it is asked to send; posts a root when there is none; or raises `fails`."""

    name: str
    max_per_second: float = 1000.0
    fails: NotifyError | None = None
    sent: list[Notification] = field(default_factory=list)

    def destination(self, *, severity, labels) -> str:
        return f"{self.name}-{severity}"

    def notify(self, notification: Notification) -> Root | None:
        if self.fails is not None:
            raise self.fails
        self.sent.append(notification)
        if notification.root is None:
            return Root(notification.destination, f"{self.name}-{len(self.sent)}")
        return None

    def check(self) -> str:
        return self.name


@dataclass
class ReplacingNotifier(FakeNotifier):
    """Finds its first root gone at the second row: posts a new root, then fails the rest of
    that row once, as a reply under the new root that Slack answered with an error."""

    def notify(self, notification: Notification) -> Root | None:
        self.sent.append(notification)
        if notification.root is None:
            return Root("pager-warning", "first")
        if notification.root.ref == "first":
            error = Transient("internal_error")
            error.root = Root("pager-warning", "second")
            raise error
        return None


def open_incident(session: Session, name: str, notifiers: list[str]) -> int:
    """An incident opened, acknowledged and noted, with rows for these notifiers only."""
    upsert = flows.open_or_update(
        session, fingerprint=name, title=name, severity="warning", source="rule"
    )
    # Rows for the registered notifiers come from the flow; these tests choose their own.
    session.execute(sa.delete(outbox.OUTBOX))
    incident_id = upsert.incident.id
    events = [outbox.Event(incident_id, upsert.event_id, upsert.action)]
    events.append(service.acknowledge(session, incident_id=incident_id, by="al").event)
    events.append(service.add_note(session, incident_id=incident_id, by="al", text="hi"))
    outbox.enqueue(session, events=events, notifiers=notifiers)
    session.commit()
    return incident_id


def dispatcher(engine: sa.Engine, *notifiers: FakeNotifier) -> Dispatcher:
    return Dispatcher(engine, list(notifiers), settings=DispatchSettings(backoff_cap_s=1.0))


def test_each_event_gets_one_row_per_registered_notifier(session):
    upsert = flows.open_or_update(
        session, fingerprint="hot", title="hot", severity="warning", source="rule"
    )
    flows.add_note(session, incident_id=upsert.incident.id, by="al", text="looking")
    session.commit()

    assert [(r.kind, r.notifier) for r in rows(session)] == [
        (kind, name) for kind in ("opened", "note") for name in NOTIFIERS
    ]


def test_a_dispatcher_claims_only_the_rows_of_its_notifiers(engine, session):
    incident = open_incident(session, "hot", ["pager", "mail"])
    pager = FakeNotifier("pager")

    while dispatcher(engine, pager).run_once():
        pass

    assert [(n.event.kind, n.root) for n in pager.sent] == [
        ("opened", None),
        ("acknowledged", Root("pager-warning", "pager-1")),
        ("note", Root("pager-warning", "pager-1")),
    ]
    by_notifier = {(r.notifier, r.kind): r.status for r in rows(session)}
    assert {k: v for k, v in by_notifier.items() if k[0] == "pager"} == {
        ("pager", kind): OutboxStatus.sent for kind in ("opened", "acknowledged", "note")
    }
    assert {v for k, v in by_notifier.items() if k[0] == "mail"} == {OutboxStatus.pending}

    mail = FakeNotifier("mail")
    while dispatcher(engine, mail).run_once():
        pass
    assert [n.event.kind for n in mail.sent] == ["opened", "acknowledged", "note"]
    roots = session.scalars(sa.select(NotificationRoot).order_by(NotificationRoot.notifier))
    assert [(r.incident_id, r.notifier, r.ref) for r in roots] == [
        (incident, "mail", "mail-1"),
        (incident, "pager", "pager-1"),
    ]


def test_a_dispatcher_refuses_two_notifiers_of_one_name(engine):
    with pytest.raises(ValueError, match="a name of its own"):
        Dispatcher(engine, [FakeNotifier("pager"), FakeNotifier("pager")])


@pytest.mark.parametrize(
    ("error", "status", "waits_s"),
    [
        (Permanent("channel_not_found"), OutboxStatus.failed, None),
        (Transient("network: refused"), OutboxStatus.pending, (0.5, 1.0)),
        (RateLimited(7), OutboxStatus.pending, (7.0, 7.0)),
        (Blocked("token_revoked"), OutboxStatus.pending, (300.0, 300.0)),
    ],
)
def test_a_notifier_error_says_what_happens_to_the_row(engine, session, error, status, waits_s):
    open_incident(session, "hot", ["pager"])
    pager = FakeNotifier("pager", fails=error)
    before = datetime.now(UTC)

    assert dispatcher(engine, pager).run_once() == 1

    first = rows(session)[0]
    assert (first.status, first.attempts, first.last_error) == (status, 1, error.reason)
    # Blocked: a retry alone cannot help, but the row waits for the fix.
    assert error.retryable == (status == OutboxStatus.pending) or isinstance(error, Blocked)
    if waits_s is not None:
        low, high = waits_s
        assert before + timedelta(seconds=low) <= first.not_before
        assert first.not_before <= datetime.now(UTC) + timedelta(seconds=high)


def test_a_root_posted_before_a_failure_is_kept_so_the_retry_does_not_post_another(engine, session):
    incident = open_incident(session, "hot", ["pager"])
    pager = ReplacingNotifier("pager")

    drain(dispatcher(engine, pager), session)

    assert [(n.event.kind, n.root.ref if n.root else None) for n in pager.sent] == [
        ("opened", None),
        ("acknowledged", "first"),  # gone: "second" posted, then the row failed
        ("acknowledged", "second"),  # the retry goes under it
        ("note", "second"),
    ]
    assert session.get(NotificationRoot, (incident, "pager")).ref == "second"
    assert {r.status for r in rows(session)} == {OutboxStatus.sent}
