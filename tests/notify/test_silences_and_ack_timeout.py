"""Silences and ack timeouts as on-call sees them in Slack (the stand-in, through slack_sdk).

A silence mutes the channel for the incidents it matches, not their record; once it ends the
next change is posted, and an incident it held back that is still unresolved is posted then.
An acknowledgement left unresolved past the ack timeout pings the channel in the incident's
thread, once per acknowledgement. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from outbox_helpers import act, drain, fire, rows
from sqlalchemy.orm import Session

from reliability.incidents import flows, service, silences
from reliability.incidents.models import IncidentStatus
from reliability.notify.models import OutboxStatus
from reliability.testing.slack import SlackStandIn

TIMEOUT = timedelta(minutes=30)


def silence(session: Session, *matchers: str) -> int:
    """An hour's silence from now, committed; its id."""
    created = silences.create(
        session,
        matchers=[silences.parse_matcher(text) for text in matchers],
        duration=timedelta(hours=1),
        by="alice",
        now=datetime.now(UTC),
        comment="reseating gpu-3",
    )
    session.commit()
    return created.id


def end_silence(session: Session, silence_id: int) -> int:
    """Expire the silence and release what it held back, as `silences expire` does; how
    many incidents were released."""
    now = datetime.now(UTC)
    _, released = flows.expire_silence(session, silence_id=silence_id, now=now)
    session.commit()
    return len(released)


def kinds(session: Session, incident_id: int) -> list[str]:
    found = [event.kind for event in service.events(session, incident_id=incident_id)]
    session.commit()
    return found


def expire_acks(session: Session, *, now: datetime | None = None) -> list[int]:
    """One run of the daemon's ack-timeout job; the incidents that were re-notified."""
    events = flows.expire_acknowledgements(session, now=now or datetime.now(UTC), timeout=TIMEOUT)
    session.commit()
    return [event.incident_id for event in events]


# -- silences ----------------------------------------------------------------------------


def test_a_silenced_incident_is_recorded_but_nothing_reaches_slack(session, slack, dispatcher):
    muted = silence(session, "node=gpu-3")
    incident = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    act(session, flows.add_note, incident, by="carol", text="reseating")
    drain(dispatcher, session)

    assert slack.calls() == []
    assert kinds(session, incident) == ["opened", "refired", "note"]
    held = rows(session)
    assert {(r.status, r.silence_id) for r in held} == {(OutboxStatus.skipped, muted)}
    assert all(f"silenced by silence {muted}" in r.last_error for r in held)


def test_incidents_the_silence_does_not_match_are_sent(session, slack, dispatcher):
    silence(session, "node=~gpu-[23]", "pool=green")
    fire(session, "gpu-3-hot", labels={"node": "gpu-3", "pool": "green"})
    fire(session, "gpu-2-blue", labels={"node": "gpu-2", "pool": "blue"})
    fire(session, "gpu-30-hot", labels={"node": "gpu-30", "pool": "green"})  # regex is anchored
    drain(dispatcher, session)

    posted = sorted(m.text.split("]")[1].split(" is hot")[0].strip() for m in slack.messages())
    assert posted == ["gpu-2-blue", "gpu-30-hot"]


def test_after_the_silence_is_expired_the_next_change_is_posted(session, slack, dispatcher):
    incident = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    drain(dispatcher, session)
    muted = silence(session, "node=gpu-3")
    fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    drain(dispatcher, session)
    [root] = slack.messages("alerts")
    assert slack.replies(root.ts) == []

    end_silence(session, muted)
    act(session, flows.add_note, incident, by="carol", text="back in service")
    drain(dispatcher, session)

    replies = [m.text for m in slack.replies(root.ts)]
    assert replies[0].startswith(f":bell: Silence #{muted} ended")
    assert "back in service" in replies[-1]
    assert len(replies) == 2


def test_an_incident_opened_during_the_silence_is_posted_when_it_ends_if_still_unresolved(
    session, slack, dispatcher
):
    muted = silence(session, "node=gpu-3")
    still_open = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    over = fire(session, "gpu-3-xid", labels={"node": "gpu-3"})
    act(session, flows.resolve, over, by="rule")
    drain(dispatcher, session)
    assert slack.calls() == []

    assert end_silence(session, muted) == 1
    assert flows.release_ended_holds(session, now=datetime.now(UTC)) == []  # once
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert "gpu-3-hot" in message.text and "RESOLVED" not in message.text
    assert kinds(session, still_open)[-1] == "silence_ended"
    assert "silence_ended" not in kinds(session, over)


def test_a_silence_lets_an_edit_of_a_posted_message_through_but_no_replies(
    session, slack, dispatcher
):
    """An edit pings nobody, and without it the channel would show the incident open."""
    incident = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    drain(dispatcher, session)
    muted = silence(session, "node=gpu-3")
    fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    act(session, flows.resolve, incident, by="bob")
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert "RESOLVED" in message.text and slack.replies(message.ts) == []
    resolved = rows(session)[-1]
    assert (resolved.kind, resolved.status, resolved.silence_id) == ("resolved", "sent", muted)
    assert end_silence(session, muted) == 0  # resolved: nothing left to tell


# -- ack timeout -------------------------------------------------------------------------


def ack_expiry_replies(slack: SlackStandIn) -> list[str]:
    [root] = slack.messages("alerts")
    return [m.text for m in slack.replies(root.ts) if "<!here>" in m.text]


def test_an_ack_left_unresolved_past_the_timeout_pings_the_thread_once(session, slack, dispatcher):
    now = datetime.now(UTC)
    incident = fire(session, "gpu-1-hot")
    act(session, flows.acknowledge, incident, by="alice", at=now - timedelta(minutes=31))
    drain(dispatcher, session)
    assert expire_acks(session, now=now - timedelta(minutes=2)) == []

    assert expire_acks(session, now=now) == [incident]
    assert expire_acks(session, now=now + timedelta(hours=1)) == []
    drain(dispatcher, session)

    [reply] = ack_expiry_replies(slack)
    assert "Acknowledged by alice 31 min ago" in reply and "still not resolved" in reply
    [call] = [c for c in slack.calls("chat.postMessage") if c.thread_ts]
    assert call.reply_broadcast  # shown in the channel, so @here reaches everyone
    [root] = slack.messages("alerts")
    assert "ACKNOWLEDGED" in root.history[-1] and "ACKNOWLEDGED" not in root.text
    assert service.get(session, incident_id=incident).status == IncidentStatus.open


def test_a_fresh_ack_restarts_the_clock(session, slack, dispatcher):
    now = datetime.now(UTC)
    incident = fire(session, "gpu-1-hot")
    act(session, flows.acknowledge, incident, by="alice", at=now - timedelta(minutes=40))
    assert expire_acks(session, now=now) == [incident]
    act(session, flows.acknowledge, incident, by="bob", at=now)

    assert expire_acks(session, now=now + timedelta(minutes=29)) == []
    assert expire_acks(session, now=now + timedelta(minutes=30)) == [incident]
    drain(dispatcher, session)

    replies = ack_expiry_replies(slack)
    assert len(replies) == 2
    assert "alice 40 min ago" in replies[0] and "bob 30 min ago" in replies[1]


def test_a_resolved_incident_never_renotifies(session, slack, dispatcher):
    now = datetime.now(UTC)
    incident = fire(session, "gpu-1-hot")
    act(session, flows.acknowledge, incident, by="alice", at=now - timedelta(hours=2))
    act(session, flows.resolve, incident, by="alice", at=now - timedelta(minutes=5))

    assert expire_acks(session, now=now) == []
    drain(dispatcher, session)
    [message] = slack.messages("alerts")
    assert "RESOLVED" in message.text and slack.replies(message.ts) == []


def test_an_ack_expiring_during_a_silence_pings_when_the_silence_ends(session, slack, dispatcher):
    now = datetime.now(UTC)
    incident = fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    act(session, flows.acknowledge, incident, by="alice", at=now - timedelta(hours=1))
    drain(dispatcher, session)
    muted = silence(session, "node=gpu-3")
    expire_acks(session, now=now)
    drain(dispatcher, session)

    [root] = slack.messages("alerts")
    assert "ACKNOWLEDGED" not in root.text  # the edit went through
    assert slack.replies(root.ts) == []  # the ping did not

    assert end_silence(session, muted) == 1
    drain(dispatcher, session)
    [reply] = [m.text for m in slack.replies(root.ts)]
    assert reply.startswith(f":bell: Silence #{muted} ended") and "still open" in reply
