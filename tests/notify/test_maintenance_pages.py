"""Maintenance windows as on-call sees them in Slack (the stand-in, through slack_sdk): an
incident in a window's scope is recorded and pages nobody; one outside it pages as usual;
when the window ends, what it held that is still unresolved is posted, once. Every test
runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from outbox_helpers import act, drain, fire, rows
from sqlalchemy.orm import Session

from reliability.incidents import flows, service
from reliability.maintenance import flows as maintenance_flows
from reliability.maintenance import service as maintenance
from reliability.notify.models import OutboxStatus

HOUR = timedelta(hours=1)


def window(session: Session, node: str, *, starts_in: timedelta = timedelta(0)) -> int:
    """A window over `node` for an hour from now (or `starts_in`), committed; its id."""
    now = datetime.now(UTC)
    made = maintenance.create(
        session,
        scope="node",
        name=node,
        targets={"node": [node]},
        starts_at=now + starts_in,
        ends_at=now + starts_in + HOUR,
        reason="reseating GPUs",
        by="ana",
        now=now,
    )
    session.commit()
    return made.id


def end(session: Session, window_id: int) -> int:
    """End the window now, as `maintenance end` does; how many incidents it released."""
    _, released = maintenance_flows.end(
        session, window_id=window_id, by="ana", now=datetime.now(UTC)
    )
    session.commit()
    return len(released)


def titles(slack) -> list[str]:
    return sorted(m.text.split("]")[1].split(" is hot")[0].strip() for m in slack.messages())


def test_a_window_holds_pages_in_scope_and_its_end_posts_what_is_still_open_once(
    session, slack, dispatcher
):
    held = window(session, "gpu-3")
    still_open = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    over = fire(session, "gpu-3-xid", labels={"node": "gpu-3"})
    act(session, flows.resolve, over, by="rule")
    fire(session, "gpu-1-hot", labels={"node": "gpu-1"})
    drain(dispatcher, session)

    assert titles(slack) == ["gpu-1-hot"]  # outside the window: paged as usual
    muted = [r for r in rows(session) if r.incident_id in (still_open, over)]
    assert {(r.status, r.maintenance_id) for r in muted} == {(OutboxStatus.skipped, held)}
    assert all(f"in maintenance window {held} until" in r.last_error for r in muted)
    assert all("(reseating GPUs)" in r.last_error for r in muted)

    assert end(session, held) == 1
    assert flows.release_ended_holds(session, now=datetime.now(UTC)) == []  # once
    drain(dispatcher, session)

    assert titles(slack) == ["gpu-1-hot", "gpu-3-hot"]
    kinds = [e.kind for e in service.events(session, incident_id=still_open)]
    session.commit()
    assert kinds == ["opened", "maintenance_ended"]


def test_a_window_lets_an_edit_of_a_posted_message_through_but_no_replies(
    session, slack, dispatcher
):
    incident = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    drain(dispatcher, session)
    held = window(session, "gpu-3")
    act(session, flows.add_note, incident, by="carol", text="reseating")
    act(session, flows.resolve, incident, by="carol")
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert "RESOLVED" in message.text and slack.replies(message.ts) == []
    assert end(session, held) == 0  # resolved: nothing left to tell


def test_a_window_scheduled_later_holds_nothing_before_it_starts(session, slack, dispatcher):
    window(session, "gpu-3", starts_in=HOUR)
    fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    drain(dispatcher, session)

    assert titles(slack) == ["gpu-3-hot"]
    assert {r.maintenance_id for r in rows(session)} == {None}


def test_a_fleet_window_never_holds_the_pages_about_the_watcher_itself(session, slack, dispatcher):
    now = datetime.now(UTC)
    maintenance.create(
        session,
        scope="fleet",
        name=None,
        targets={},
        starts_at=now,
        ends_at=now + HOUR,
        reason="datacentre move",
        by="ana",
        now=now,
    )
    session.commit()
    fire(session, "gpu-1-hot", labels={"node": "gpu-1"})
    fire(session, "slack-failing-hot", labels={"notifier": "slack"})
    fire(session, "daemon-down-hot", labels={"component": "reliability", "node": "gpu-1"})
    drain(dispatcher, session)

    # Whoever moves the fleet must still learn that pages or the daemons broke meanwhile.
    assert titles(slack) == ["daemon-down-hot", "slack-failing-hot"]
