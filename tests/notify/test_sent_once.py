"""No page lost, none sent twice: a dispatcher that dies after Slack took a message but before
the database recorded it leaves its claim to run out; the next claim finds the message by its
metadata (`conversations.history`, `conversations.replies`) and records it instead of posting
it again. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from outbox_helpers import drain, fire, rows, slack_config, statuses
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from reliability.incidents import flows
from reliability.notify.base import Notification, Root
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.models import NotificationRoot, OutboxStatus
from reliability.notify.slack import SlackClient, SlackNotifier
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

LEASE_S = 0.5


class Killed(BaseException):
    """The process dying: nothing after it runs, nothing catches it."""


class DiesMidSend:
    """A dispatcher's Slack notifier whose process is SIGKILLed right after Slack accepted the
    row's message (`after_post`), or right before it was sent."""

    def __init__(self, inner: SlackNotifier, *, after_post: bool = True) -> None:
        self.inner, self.name, self.after_post = inner, inner.name, after_post

    def __getattr__(self, attribute: str):
        return getattr(self.inner, attribute)

    def notify(self, notification: Notification) -> Root | None:
        if self.after_post:
            self.inner.notify(notification)
        raise Killed


def kill_mid_send(engine: sa.Engine, client: SlackClient, *, after_post: bool = True) -> None:
    """One dispatcher pass that dies holding the first due row's claim, unrecorded."""
    dying = DiesMidSend(SlackNotifier(client, slack_config()), after_post=after_post)
    dispatcher = Dispatcher(engine, dying, settings=DispatchSettings(lease_s=LEASE_S))
    with pytest.raises(Killed):
        dispatcher.run_once()


def next_daemon(engine: sa.Engine, client: SlackClient) -> Dispatcher:
    """Another daemon, started afresh: it knows nothing of what the dead one sent."""
    return Dispatcher(
        engine, SlackNotifier(client, slack_config()), settings=DispatchSettings(lease_s=LEASE_S)
    )


def drain_after_lease(dispatcher: Dispatcher, session) -> None:
    """Passes until every row is recorded: the dead claim runs out after `LEASE_S`."""

    def recorded() -> bool:
        dispatcher.run_once()
        return all(row.status != OutboxStatus.pending for row in rows(session))

    wait_for("the dead claim taken over and every row recorded", recorded, 15)


def posts(slack: SlackStandIn) -> list[str]:
    return [c.ts for c in slack.calls("chat.postMessage") if c.ok and c.ts]


def test_a_root_posted_by_a_daemon_killed_before_recording_it_is_found_not_posted_again(
    session, engine, slack, slack_client
):
    incident = fire(session, "gpu-1-hot")
    kill_mid_send(engine, slack_client)
    [posted] = slack.messages("alerts")
    assert posted.metadata == {
        "event_type": "reliability_page",
        "event_payload": {"outbox_row": rows(session)[0].id, "incident_id": incident},
    }

    drain_after_lease(next_daemon(engine, slack_client), session)

    assert [m.ts for m in slack.messages("alerts")] == [posted.ts]
    assert len(posts(slack)) == 1
    assert statuses(session) == {"sent": 1}
    session.expire_all()
    root = session.get(NotificationRoot, (incident, "slack"))
    assert (root.destination, root.ref) == (slack.channel_id("alerts"), posted.ts)
    session.commit()
    [lookup] = [c for c in slack.calls("conversations.history") if c.ok]
    assert lookup.channel == slack.channel_id("alerts")  # "#alerts" resolved to its ID

    # The incident goes on under the message found: acknowledged, it edits that one.
    flows.acknowledge(session, incident_id=incident, by="alice")
    session.commit()
    drain(next_daemon(engine, slack_client), session)
    [message] = slack.messages("alerts")
    assert message.ts == posted.ts and message.edits == 1


def test_a_thread_reply_posted_by_a_killed_daemon_is_found_in_the_thread(
    session, engine, slack, slack_client
):
    incident = fire(session, "gpu-2-xid")
    drain(next_daemon(engine, slack_client), session)
    flows.add_note(session, incident_id=incident, by="carol", text="draining the node")
    session.commit()

    kill_mid_send(engine, slack_client)
    [root] = slack.messages("alerts")
    [reply] = slack.replies(root.ts)
    drain_after_lease(next_daemon(engine, slack_client), session)

    assert [m.ts for m in slack.replies(root.ts)] == [reply.ts]
    assert statuses(session) == {"sent": 2}
    [lookup] = [c for c in slack.calls("conversations.replies") if c.ok]
    assert lookup.ts == root.ts


def test_without_the_history_scope_the_row_is_posted_again_once_and_the_log_says_why(
    session, engine, slack, slack_client, caplog
):
    slack.revoke_scope("channels:history")
    fire(session, "gpu-3-hot")
    kill_mid_send(engine, slack_client)

    with caplog.at_level(logging.WARNING, logger="reliability.notify"):
        drain_after_lease(next_daemon(engine, slack_client), session)

    assert len(slack.messages("alerts")) == 2  # at least once: the page is not lost
    assert len(posts(slack)) == 2
    assert statuses(session) == {"sent": 1}
    [why] = [r.getMessage() for r in caplog.records if "not exactly once" in r.getMessage()]
    assert "missing_scope" in why


def test_a_row_whose_daemon_died_before_posting_is_posted_once(
    session, engine, slack, slack_client
):
    fire(session, "gpu-4-hot")
    kill_mid_send(engine, slack_client, after_post=False)
    assert slack.messages("alerts") == []

    drain_after_lease(next_daemon(engine, slack_client), session)

    assert len(slack.messages("alerts")) == 1
    assert statuses(session) == {"sent": 1}
    assert len(slack.calls("conversations.history")) == 1


def test_rows_claimed_for_the_first_time_are_sent_without_reading_any_history(
    session, engine, slack, slack_client
):
    incident = fire(session, "gpu-5-hot")
    flows.add_note(session, incident_id=incident, by="dave", text="looking")
    session.commit()
    drain(next_daemon(engine, slack_client), session)

    assert statuses(session) == {"sent": 2}
    assert [c.method for c in slack.calls()] == ["chat.postMessage", "chat.postMessage"]


# -- the stand-in reads history as Slack does ----------------------------------------------


def test_history_and_replies_return_metadata_only_when_asked_and_page_with_cursors(slack):
    client = WebClient(token=slack.token, base_url=slack.api_url)
    channel = slack.channel_id("alerts")
    metadata = {"event_type": "reliability_page", "event_payload": {"outbox_row": 7}}
    root = client.chat_postMessage(channel="#alerts", text="root", metadata=metadata)["ts"]
    for number in range(3):
        client.chat_postMessage(channel=channel, text=f"reply {number}", thread_ts=root)
    client.chat_postMessage(channel=channel, text="later")

    plain = client.conversations_history(channel=channel)
    assert [m["text"] for m in plain["messages"]] == ["later", "root"]  # newest first
    assert all("metadata" not in m for m in plain["messages"])
    first = client.conversations_history(channel=channel, include_all_metadata=True, limit=1)
    assert first["has_more"] and [m["text"] for m in first["messages"]] == ["later"]
    cursor = first["response_metadata"]["next_cursor"]
    second = client.conversations_history(
        channel=channel, include_all_metadata=True, limit=1, cursor=cursor
    )
    assert second["messages"][0]["metadata"] == metadata and not second["has_more"]

    thread = client.conversations_replies(channel=channel, ts=root, include_all_metadata=True)
    assert [m["text"] for m in thread["messages"]] == ["root", "reply 0", "reply 1", "reply 2"]

    with pytest.raises(SlackApiError) as by_name:
        client.conversations_history(channel="#alerts")
    assert by_name.value.response["error"] == "channel_not_found"
    slack.revoke_scope("channels:history")
    with pytest.raises(SlackApiError) as refused:
        client.conversations_replies(channel=channel, ts=root)
    assert refused.value.response["error"] == "missing_scope"
