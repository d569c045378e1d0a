"""No page is lost for good: a root message that was deleted (or whose channel was archived)
is posted again and its thread goes on there; a refused token or channel holds the pages
under a critical condition (metrics, /readyz, the exported rules) until it is fixed; a Slack
outage is two log lines, not one per retry.

Against the Slack stand-in through the real slack_sdk client; every test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
import yaml
from outbox_helpers import act, by_incident, drain, fire, rows, slack_config, statuses
from starlette.testclient import TestClient

from reliability import catalog, web
from reliability.collect.snapshot import Snapshot
from reliability.config import Config
from reliability.detect.prometheus import export
from reliability.incidents import flows
from reliability.notify.base import Transient
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.models import NotificationRoot
from reliability.notify.slack import SlackClient, SlackNotifier
from reliability.testing.slack import SlackStandIn

LOST = "The earlier message about this incident was lost"


def root_posts(slack: SlackStandIn) -> list[str]:
    """The ts of every root message posted (thread replies left out)."""
    return [c.ts for c in slack.calls("chat.postMessage") if c.ok and not c.thread_ts]


def values(dispatcher: Dispatcher) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.metric.name, s.labels): s.value for s in dispatcher.samples()}


# -- a root message that is gone ---------------------------------------------------------


def test_a_deleted_root_is_posted_again_saying_so_and_the_thread_goes_on_under_it(
    session, slack, dispatcher
):
    incident = fire(session, "node-down-gpu-3")
    drain(dispatcher, session)
    [first] = slack.messages("alerts")
    slack.delete(first.ts)  # someone tidied the channel

    act(session, flows.acknowledge, incident, by="alice")
    drain(dispatcher, session)
    act(session, flows.add_note, incident, by="alice", text="rebooting gpu-3")
    act(session, flows.resolve, incident, by="rule")
    drain(dispatcher, session)

    [again] = slack.messages("alerts")
    reposted = next(c for c in slack.calls("chat.postMessage") if c.ts == again.ts)
    assert LOST in str(reposted.blocks) and "message_not_found" in str(reposted.blocks)
    assert "ACKNOWLEDGED" in reposted.text  # it showed the incident as it was then
    assert "RESOLVED" in again.text and again.edits == 1  # and the thread went on there
    [note] = slack.replies(again.ts)
    assert note.text.startswith(":memo: Note by alice")
    assert session.get(NotificationRoot, (incident, "slack")).ref == again.ts
    assert statuses(session) == {"sent": 4}  # no row failed: nothing lost
    assert root_posts(slack) == [first.ts, again.ts]  # and nothing posted twice
    assert slack.orphans() == []


def test_a_reopened_incident_whose_message_was_deleted_is_shown_again(session, slack, dispatcher):
    incident = fire(session, "node-down-gpu-1")
    act(session, flows.resolve, incident, by="rule")
    drain(dispatcher, session)
    slack.delete(slack.messages("alerts")[0].ts)

    assert fire(session, "node-down-gpu-1") == incident  # reopened
    drain(dispatcher, session)

    [shown] = slack.messages("alerts")
    assert "RESOLVED" not in shown.text and "reopened once" in str(shown.blocks)
    assert LOST in str(shown.blocks)
    assert statuses(session) == {"sent": 3}


# -- refused channels and tokens: held, visible, delivered once fixed -------------------


def test_an_archived_channel_holds_its_pages_visibly_until_it_is_unarchived(
    session, slack, dispatcher_factory
):
    dispatcher = dispatcher_factory(blocked_retry_s=0.3)
    incident = fire(session, "api-503")
    drain(dispatcher, session)
    slack.archive("alerts")

    act(session, flows.acknowledge, incident, by="alice")
    fire(session, "disk-full")
    for _ in range(5):
        dispatcher.run_once()

    assert statuses(session) == {"sent": 1, "pending": 2}  # kept, not failed
    assert [r.last_error for r in rows(session) if r.kind == "acknowledged"] == ["is_archived"]
    metrics = values(dispatcher)
    assert metrics[(catalog.NOTIFIER_HEALTHY.name, ("slack",))] == 0
    alerts = slack.channel_id("alerts")
    assert any(
        labels[1] in (alerts, "#alerts") and labels[2] == "is_archived"
        for name, labels in metrics
        if name == catalog.NOTIFIER_PERMANENT_FAILURE.name
    )
    assert "is_archived" in dispatcher.health.condition()

    slack.archive("alerts", archived=False)
    drain(dispatcher, session)

    assert statuses(session) == {"sent": 3}
    assert [("ACKNOWLEDGED" in m.text, "disk-full" in m.text) for m in slack.messages()] == [
        (True, False),
        (False, True),
    ]
    assert values(dispatcher)[(catalog.NOTIFIER_HEALTHY.name, ("slack",))] == 1
    assert dispatcher.health.condition() is None


def readyz(dispatcher: Dispatcher) -> dict:
    """The daemon's /readyz, with the dispatcher's condition wired as the daemon wires it."""
    app = web.build_app(
        Snapshot(),
        readiness=[],
        critical=[web.Readiness("notify", dispatcher.health.condition)],
    )
    with TestClient(app) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200  # still ready: it records incidents and takes webhooks
    return answer.json()


def test_a_deactivated_bot_is_found_at_start_its_pages_kept_and_sent_once_it_is_back(
    session, slack, dispatcher_factory
):
    dispatcher = dispatcher_factory(blocked_retry_s=60.0)
    slack.deactivate()
    fire(session, "gpu-1-hot")
    fire(session, "gpu-2-hot")

    dispatcher.check_notifiers()  # what the loop does first when the daemon starts
    for _ in range(3):
        dispatcher.run_once()

    assert slack.calls("chat.postMessage") == []  # nothing tried against a refused token
    assert statuses(session) == {"pending": 2}
    critical = readyz(dispatcher)["critical"]
    assert "account_inactive" in critical["notify"] and "anywhere" in critical["notify"]
    assert values(dispatcher)[(catalog.NOTIFIER_HEALTHY.name, ("slack",))] == 0

    slack.deactivate(False)
    dispatcher.check_notifiers()  # the next check, minutes later
    drain(dispatcher, session)

    assert statuses(session) == {"sent": 2}
    assert readyz(dispatcher)["critical"] == {}
    assert values(dispatcher)[(catalog.NOTIFIER_HEALTHY.name, ("slack",))] == 1


def test_a_wrong_token_holds_every_page_and_a_restart_with_the_right_one_sends_them(session, slack):
    wrong = SlackClient("xoxb-0-0-revokedrevokedrevoked", base_url=slack.api_url, timeout_s=2)
    settings = DispatchSettings(blocked_retry_s=600.0)
    before = Dispatcher(session.get_bind(), SlackNotifier(wrong, slack_config()), settings=settings)
    incident = fire(session, "api-503")
    before.run_once()  # the first page meets the refusal...
    act(session, flows.acknowledge, incident, by="alice")
    fire(session, "disk-full")
    for _ in range(3):
        before.run_once()

    assert statuses(session) == {"pending": 3}
    assert len(slack.calls()) == 1  # ...and nothing more is tried while it holds
    assert "invalid_auth" in readyz(before)["critical"]["notify"]

    right = SlackClient(slack.token, base_url=slack.api_url, timeout_s=2)
    after = Dispatcher(session.get_bind(), SlackNotifier(right, slack_config()), settings=settings)
    after.check_notifiers()  # the restarted daemon's check at start
    drain(after, session)

    assert statuses(session) == {"sent": 3}
    assert Counter(k for kinds in by_incident(slack, session).values() for k in kinds) == {
        "post": 2,
        "update": 1,
    }


def test_the_exported_rules_alert_on_a_notifier_that_cannot_deliver():
    groups = yaml.safe_load(export(Config()).text)["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r["alert"] == "NotifierFailing"]

    assert catalog.NOTIFIER_HEALTHY.name in rule["expr"] and "< 1" in rule["expr"]
    assert rule["labels"]["severity"] == "critical"


# -- quiet logs --------------------------------------------------------------------------


def test_a_slack_outage_is_one_line_down_and_one_line_back(
    session, slack, dispatcher_factory, caplog: pytest.LogCaptureFixture
):
    dispatcher = dispatcher_factory(backoff_base_s=0.02, backoff_cap_s=0.05)
    caplog.set_level(logging.INFO)
    for number in range(3):
        fire(session, f"outage-{number}")
    slack.outage()
    for _ in range(30):
        dispatcher.run_once()
        time.sleep(0.05)
    retries = values(dispatcher)[(catalog.SLACK_CALL_FAILURES.name, ("transient",))]
    slack.outage(False)
    drain(dispatcher, session)

    assert retries >= 10  # many failed calls...
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    down = [line for line in lines if "unreachable" in line[2]]
    back = [line for line in lines if "reachable again" in line[2]]
    assert len(down) == 1 and down[0][1] == "WARNING"  # ...one line when it went down
    assert len(back) == 1 and back[0][1] == "INFO"  # and one when it came back
    assert [line for line in lines if line[1] in ("WARNING", "ERROR")] == down
    assert statuses(session) == {"sent": 3}


def test_slack_sdks_own_line_per_failed_request_shows_only_at_debug(
    slack, slack_client, caplog: pytest.LogCaptureFixture
):
    slack.outage()
    for level in (logging.INFO, logging.DEBUG):
        with caplog.at_level(level), pytest.raises(Transient):
            slack_client.post("#alerts", "x")
    failed = [r for r in caplog.records if "Failed to send a request" in r.getMessage()]

    assert [r.levelname for r in failed] == ["DEBUG"]  # kept for whoever debugs, not at INFO
