"""The outbox and its dispatcher, against the Slack stand-in through the real slack_sdk client.

One Slack message per incident, edited in place as it is acknowledged and resolved, with a
thread for everything else; nothing lost or duplicated when Slack rate-limits, goes down, or
the dispatcher is killed. Every test runs on SQLite and PostgreSQL unless it says otherwise.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from outbox_helpers import (
    act,
    by_incident,
    drain,
    fire,
    rows,
    slack_config,
    statuses,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from reliability import catalog, db
from reliability.config import SlackRoute
from reliability.incidents import flows, service
from reliability.incidents.models import IncidentEvent
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.models import NotificationRoot, OutboxStatus
from reliability.notify.slack import SlackNotifier
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

HERE = Path(__file__).parent

# -- one message per incident ------------------------------------------------------------


def test_one_message_per_incident_edited_in_place_on_ack_and_resolve(session, slack, dispatcher):
    incident = fire(session, "gpu-1-hot")
    drain(dispatcher, session)
    [message] = slack.messages("alerts")
    assert "gpu-1-hot is hot" in message.text and message.edits == 0

    act(session, flows.acknowledge, incident, by="alice")
    drain(dispatcher, session)
    act(session, flows.resolve, incident, by="bob")
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert message.edits == 2
    assert "ACKNOWLEDGED" in message.history[1]
    assert "RESOLVED" in message.text
    assert "Resolved by bob after" in str(message.blocks)
    root = session.get(NotificationRoot, (incident, "slack"))
    assert (root.destination, root.ref) == (slack.channel_id("alerts"), message.ts)
    assert statuses(session) == {"sent": 3}
    assert slack.orphans() == []


def test_refires_and_notes_are_thread_replies_in_order(session, slack, dispatcher):
    incident = fire(session, "gpu-2-xid")
    fire(session, "gpu-2-xid")
    act(session, flows.add_note, incident, by="carol", text="draining the node")
    fire(session, "gpu-2-xid")
    drain(dispatcher, session)

    [root] = slack.messages("alerts")
    replies = [m.text for m in slack.replies(root.ts)]
    assert len(replies) == 3
    assert "Fired again" in replies[0]
    assert "Note by carol" in replies[1] and "draining the node" in replies[1]
    assert "Fired again" in replies[2]


def test_a_reopened_incident_edits_its_original_message(session, slack, dispatcher):
    incident = fire(session, "api-503")
    act(session, flows.resolve, incident, by="rule")
    drain(dispatcher, session)
    assert fire(session, "api-503") == incident  # within the reopen window
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert message.edits == 2  # resolved, then open again
    assert "RESOLVED" not in message.text
    assert "reopened once" in str(message.blocks)


def test_channels_follow_the_routes_by_severity_and_service(session, slack, dispatcher_factory):
    slack.add_channel("serving")
    routes = [
        SlackRoute(channel="#serving", services=["chat"]),
        SlackRoute(channel="#oncall", severity=["critical"]),
    ]
    dispatcher = dispatcher_factory(slack_config(routes=routes))
    fire(session, "chat-errors", severity="warning", labels={"service": "chat"})
    fire(session, "gpu-lost", severity="critical")
    fire(session, "disk-full", severity="warning")
    drain(dispatcher, session)

    assert ["chat-errors" in m.text for m in slack.messages("serving")] == [True]
    assert ["gpu-lost" in m.text for m in slack.messages("oncall")] == [True]
    assert ["disk-full" in m.text for m in slack.messages("alerts")] == [True]


def test_the_dashboard_link_and_runbook_command_reach_the_message(
    session, slack, dispatcher_factory
):
    dispatcher = dispatcher_factory(grafana_url="https://grafana.example/")
    command = "reliability runbook run node-failover --param node=gpu-3"
    fire(session, "gpu-3-down", labels={"node": "gpu-3", "runbook": command})
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert command in str(message.blocks)
    assert "<https://grafana.example/d/reliability-gpu-fleet?var-node=gpu-3&from=" in str(
        message.blocks
    )
    assert slack.token not in str(slack.calls())


def dashboard_link(message) -> str:
    [link] = [
        block["text"]["text"]
        for block in message.blocks
        if "Open the Grafana dashboard" in block.get("text", {}).get("text", "")
    ]
    return link.removeprefix("<").removesuffix("|Open the Grafana dashboard>")


def test_each_message_links_to_the_dashboard_that_shows_its_incident(
    session, slack, dispatcher_factory
):
    """A node's incident opens the GPU fleet on that node, an endpoint's the API health of
    that endpoint, anything else the incidents dashboard; the time range starts half an
    hour before the incident and, once it is resolved, ends half an hour after."""
    dispatcher = dispatcher_factory(grafana_url="https://grafana.example/sub")
    gpu = fire(session, "gpu-3-hot", labels={"node": "gpu-3", "gpu": "1"})
    fire(session, "hosted-busy", labels={"endpoint": "hosted-api", "service": "chat"})
    fire(session, "outbox-stuck", labels={"service": "chat"})
    drain(dispatcher, session)
    act(session, flows.resolve, gpu, by="alice")
    drain(dispatcher, session)

    found = {m.text.split("] ")[1].split()[0]: dashboard_link(m) for m in slack.messages("alerts")}
    started = {
        i.fingerprint: int((i.started_at - timedelta(minutes=30)).timestamp() * 1000)
        for i in service.list_incidents(session)
    }
    resolved_at = service.get(session, incident_id=gpu).resolved_at
    assert resolved_at is not None
    until = int((resolved_at + timedelta(minutes=30)).timestamp() * 1000)
    assert found == {
        "gpu-3-hot": "https://grafana.example/sub/d/reliability-gpu-fleet?var-node=gpu-3"
        f"&from={started['gpu-3-hot']}&to={until}",
        "hosted-busy": "https://grafana.example/sub/d/reliability-api-health"
        f"?var-endpoint=hosted-api&from={started['hosted-busy']}&to=now",
        "outbox-stuck": "https://grafana.example/sub/d/reliability-incidents-runbooks"
        f"?from={started['outbox-stuck']}&to=now",
    }


def test_without_a_grafana_url_the_message_has_no_dashboard_link(session, slack, dispatcher):
    fire(session, "gpu-3-hot", labels={"node": "gpu-3"})
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert "Open the Grafana dashboard" not in str(message.blocks)


# -- pacing, rate limits, failures -------------------------------------------------------


def test_at_most_one_message_per_second_per_channel_by_default(session, slack, dispatcher_factory):
    dispatcher = dispatcher_factory(slack_config(max_per_second=1.0))
    for name in ("a", "b", "c"):
        fire(session, name)
    drain(dispatcher, session)

    times = [c.received_at for c in slack.calls("chat.postMessage")]
    assert len(times) == 3
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.95


def test_a_429_storm_loses_nothing_and_waits_for_retry_after(session, slack, dispatcher):
    for name in ("a", "b", "c"):
        incident = fire(session, name)
        act(session, flows.resolve, incident, by="rule")
    slack.rate_limit(3, retry_after=1)
    drain(dispatcher, session, timeout_s=15)

    calls = slack.calls()
    limited = [i for i, c in enumerate(calls) if c.status == 429]
    assert len(limited) == 3
    for index in limited:
        # The next attempt from this single sender comes no sooner than Retry-After.
        assert calls[index + 1].received_at - calls[index].received_at >= 0.99
    assert statuses(session) == {"sent": 6}
    assert all(kinds == ["post", "update"] for kinds in by_incident(slack, session).values())
    assert sum(r.attempts for r in rows(session)) == 6 + 3  # each 429 cost one more attempt


def test_a_permanent_error_fails_the_row_and_the_others_go_on(session, slack, dispatcher, caplog):
    lost = fire(session, "gpu-lost", severity="critical")
    fire(session, "disk-full", severity="warning")
    slack.fail_next(1, "msg_too_long")  # this message can never be sent as it is
    with caplog.at_level(logging.ERROR, logger="reliability.notify"):
        drain(dispatcher, session)

    failed = [r for r in rows(session) if r.status == OutboxStatus.failed]
    assert [(r.incident_id, r.last_error, r.attempts) for r in failed] == [
        (lost, "msg_too_long", 1)
    ]
    assert ["disk-full" in m.text for m in slack.messages("alerts")] == [True]
    assert "msg_too_long" in caplog.text and slack.token not in caplog.text


def test_an_update_after_a_failed_root_posts_a_fresh_root(session, slack, dispatcher):
    incident = fire(session, "gpu-lost")
    slack.fail_next(1, "invalid_blocks")
    drain(dispatcher, session)
    assert slack.messages() == []

    act(session, flows.acknowledge, incident, by="alice")
    drain(dispatcher, session)

    [message] = slack.messages("alerts")
    assert "ACKNOWLEDGED" in message.text and message.edits == 0
    assert [r.status for r in rows(session)] == [OutboxStatus.failed, OutboxStatus.sent]


def test_old_news_is_skipped_but_a_posted_incident_is_always_brought_up_to_date(
    session, slack, dispatcher
):
    now = datetime.now(UTC)
    posted = fire(session, "posted", at=now - timedelta(hours=3))
    drain(dispatcher, session)
    act(session, flows.resolve, posted, by="rule", at=now - timedelta(hours=2))
    old = fire(session, "old", at=now - timedelta(hours=3))
    act(session, flows.resolve, old, by="rule", at=now - timedelta(hours=2))
    fire(session, "still-open", at=now - timedelta(hours=3))
    drain(dispatcher, session)

    assert [r.status.value for r in rows(session) if r.incident_id == old] == ["skipped"] * 2
    texts = [m.text for m in slack.messages("alerts")]
    assert len(texts) == 2
    assert "RESOLVED" in texts[0] and "posted" in texts[0]
    assert "still-open" in texts[1]


# -- outages, concurrency and crashes ----------------------------------------------------


def open_and_resolve_during_outage(
    session: Session, slack: SlackStandIn, dispatcher: Dispatcher, *, incidents: int, down_s: float
) -> None:
    """Take Slack down, open and resolve `incidents` incidents spread over `down_s` seconds
    with the dispatcher running, bring Slack back, and wait for the outbox to empty."""
    slack.outage()
    dispatcher.start()
    started = time.monotonic()
    ids = []
    for number in range(incidents):
        ids.append(fire(session, f"outage-{number:03d}"))
        time.sleep(down_s / 2 / incidents)
    for incident in ids:
        act(session, flows.resolve, incident, by="rule")
        time.sleep(down_s / 2 / incidents)
    time.sleep(max(0.0, down_s - (time.monotonic() - started)))
    assert slack.calls() == []  # nothing got through while down
    slack.outage(False)
    wait_for("the backlog to be sent", lambda: statuses(session) == {"sent": 2 * incidents}, 30)


def assert_each_incident_posted_once_then_updated(session, slack, incidents: int) -> None:
    calls = by_incident(slack, session)
    assert len(calls) == incidents
    assert all(kinds == ["post", "update"] for kinds in calls.values()), calls
    assert len(slack.messages("alerts")) == incidents
    assert all("RESOLVED" in m.text for m in slack.messages("alerts"))


def test_slack_down_while_incidents_open_and_resolve_loses_and_repeats_nothing(
    session, slack, dispatcher
):
    """A 5 s outage stands in for the issue's 60 s: with the backoff cap at 1 s, every
    second of outage is another round of failed probes, so 5 s already exercises
    retry-after-retry; the real 60 s runs once, in the next test."""
    open_and_resolve_during_outage(session, slack, dispatcher, incidents=20, down_s=5)
    assert_each_incident_posted_once_then_updated(session, slack, 20)


def test_slack_down_for_the_full_60_seconds_with_50_incidents(tmp_path, slack, slack_client):
    """The issue's scenario at full length (about 65 s): SQLite only, to keep the suite's
    time reasonable; the backend-independent part is the test above, on both databases."""
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    settings = DispatchSettings(backoff_cap_s=5.0)
    notifier = SlackNotifier(slack_client, slack_config(max_per_second=50))
    dispatcher = Dispatcher(engine, notifier, settings=settings)
    try:
        with db.session_factory(engine)() as session:
            open_and_resolve_during_outage(session, slack, dispatcher, incidents=50, down_s=60)
            assert_each_incident_posted_once_then_updated(session, slack, 50)
    finally:
        dispatcher.stop()
        engine.dispose()


def test_two_dispatchers_at_once_send_each_row_once(session, slack, dispatcher_factory):
    first, second = dispatcher_factory(), dispatcher_factory()
    first.start()
    second.start()
    for number in range(30):
        incident = fire(session, f"race-{number}")
        act(session, flows.acknowledge, incident, by="alice")
        act(session, flows.resolve, incident, by="bob")
    wait_for("every row to be sent", lambda: statuses(session) == {"sent": 90}, 20)

    calls = by_incident(slack, session)
    assert len(calls) == 30
    assert all(kinds == ["post", "update", "update"] for kinds in calls.values()), calls


def test_a_running_dispatcher_sends_a_new_row_well_within_a_second_and_stops_in_one(
    session, slack, dispatcher
):
    dispatcher.start()
    time.sleep(0.3)  # idle: the next row arrives between two polls
    started = time.monotonic()
    fire(session, "latency")
    wait_for("the message", lambda: len(slack.messages()) == 1, 1.0, every=0.02)
    latency = time.monotonic() - started

    stopping = time.monotonic()
    assert dispatcher.stop()
    assert time.monotonic() - stopping < 1.0
    assert latency < 0.5


def test_metrics_count_what_the_dispatcher_did(session, slack, dispatcher_factory):
    routes = [SlackRoute(channel="#no-such-channel", severity=["info"])]
    dispatcher = dispatcher_factory(slack_config(routes=routes), stats_interval_s=0.05)
    fire(session, "failed")
    fire(session, "sent")
    fire(session, "held", severity="info")
    slack.fail_next(1, "msg_too_long", method="chat.postMessage")
    dispatcher.start()
    done = {"failed": 1, "sent": 1, "pending": 1}
    wait_for("the outbox to settle", lambda: statuses(session) == done, 5)

    def refreshed() -> dict | None:  # the gauges are refreshed every stats_interval_s
        values = {(s.metric, s.labels): s.value for s in dispatcher.samples()}
        return values if values.get((catalog.OUTBOX_PENDING, ())) == 1 else None

    values = wait_for("the gauges to show the settled outbox", refreshed, 5)
    assert values[(catalog.OUTBOX_ROWS, ("sent",))] == 1
    assert values[(catalog.OUTBOX_ROWS, ("failed",))] == 1
    assert values[(catalog.SLACK_CALL_FAILURES, ("permanent",))] == 2
    assert values[(catalog.OUTBOX_PENDING, ())] == 1  # held for the missing channel
    assert values[(catalog.NOTIFIER_HEALTHY, ("slack",))] == 0
    held = (catalog.NOTIFIER_PERMANENT_FAILURE, ("slack", "#no-such-channel", "channel_not_found"))
    assert values[held] <= time.time()


def test_a_dispatcher_killed_mid_backlog_delivers_every_row_after_restart(tmp_path, slack):
    """SIGKILL with 100 rows pending (SQLite file, dispatcher in a subprocess).

    Each row is sent exactly once, the one in flight at the instant of the kill too: when
    Slack accepted it and the process died before recording it, the restarted dispatcher
    finds the message (its metadata names the row) instead of posting it again.
    """
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            for number in range(100):
                fire(session, f"kill-{number:03d}")
            first = start_dispatcher_process(url, slack)
            wait_for("30 posts", lambda: len(slack.calls("chat.postMessage")) >= 30, 20)
            first.send_signal(signal.SIGKILL)
            first.wait(5)
            at_kill = len(slack.calls("chat.postMessage"))
            assert at_kill < 100, "the kill came too late to leave a backlog"

            second = start_dispatcher_process(url, slack)
            try:
                wait_for("every row sent", lambda: statuses(session) == {"sent": 100}, 30)
            finally:
                second.terminate()
                second.wait(5)
            posts = Counter(c.text for c in slack.calls("chat.postMessage") if c.ok)
    finally:
        engine.dispose()
    assert len(posts) == 100
    assert sum(posts.values()) == 100, posts.most_common(3)


@pytest.mark.postgres
def test_a_page_sent_as_the_database_went_away_is_recorded_when_it_is_back_not_sent_again(
    pg_databases, pg_server, slack, slack_client
):
    """Slack took the root message, then the database was gone before the row was marked
    sent, for longer than the row's claim: the dispatcher records it when the database
    answers again, before claiming anything, and sends nothing twice."""
    url = pg_databases()
    db.upgrade(url)
    name = make_url(url).database
    engine = db.make_engine(url)

    def allow(allowed: bool) -> None:
        with pg_server.connect() as c:
            c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                c.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    f" WHERE datname = '{name}'"
                )

    class GoneAfterSending:
        """Slack, with the database going away right after Slack accepted the first call."""

        def __init__(self, inner: SlackNotifier) -> None:
            self.inner, self.name, self.calls = inner, inner.name, 0

        def __getattr__(self, attribute: str):
            return getattr(self.inner, attribute)

        def notify(self, notification):
            done = self.inner.notify(notification)
            self.calls += 1
            if self.calls == 1:
                allow(False)
            return done

    dispatcher = Dispatcher(
        engine,
        GoneAfterSending(SlackNotifier(slack_client, slack_config())),
        settings=DispatchSettings(lease_s=0.5),
    )
    try:
        with db.session_factory(engine)() as session:
            fire(session, "gpu-1-hot")
        with pytest.raises(sa.exc.OperationalError):
            dispatcher.run_once()
        time.sleep(1.0)  # gone longer than the claim
        with pytest.raises(sa.exc.OperationalError):
            dispatcher.run_once()  # still gone: still kept
        allow(True)
        dispatcher.run_once()
        with db.session_factory(engine)() as session:
            assert statuses(session) == {"sent": 1}
            assert session.scalar(sa.select(sa.func.count()).select_from(NotificationRoot)) == 1
        assert len(slack.calls("chat.postMessage")) == 1
        assert dispatcher.run_once() == 0
    finally:
        allow(True)
        engine.dispose()


def start_dispatcher_process(url: str, slack: SlackStandIn) -> subprocess.Popen[bytes]:
    environment = os.environ | {"SLACK_BOT_TOKEN": slack.token}
    return subprocess.Popen(
        [sys.executable, str(HERE / "dispatcher_process.py"), url, slack.api_url],
        env=environment,
        cwd=HERE.parent.parent,
    )


def test_an_outbox_row_commits_and_rolls_back_with_its_event(session):
    """The transactional outbox: a notification exists exactly when its event does."""
    fire(session, "committed")
    flows.open_or_update(
        session, fingerprint="rolled-back", title="t", severity="info", source="rule"
    )
    session.rollback()

    assert [(r.kind, r.status, r.attempts) for r in rows(session)] == [
        ("opened", OutboxStatus.pending, 0)
    ]


def test_the_service_writes_one_outbox_row_per_timeline_event(session):
    """Every way an incident changes (single firings, a batch, ack, note, resolve, reopen)
    leaves exactly one pending row per event, on the statement path of each database."""
    first = fire(session, "gpu-1-hot")
    fire(session, "gpu-1-hot")
    flows.open_or_update_many(
        session,
        firings=[
            service.Firing("batch-a", "a", "warning", "rule"),
            service.Firing("batch-b", "b", "warning", "rule", data={"runbook": "x"}),
            service.Firing("batch-a", "a", "warning", "rule"),
        ],
    )
    act(session, flows.acknowledge, first, by="alice")
    act(session, flows.add_note, first, by="alice", text="looking")
    act(session, flows.resolve, first, by="alice")
    fire(session, "gpu-1-hot")  # within the reopen window

    events = list(session.scalars(sa.select(IncidentEvent).order_by(IncidentEvent.id)))
    queued = rows(session)
    assert [(r.event_id, r.kind) for r in queued] == [(e.id, e.kind) for e in events]
    assert {r.status for r in queued} == {OutboxStatus.pending}
    kinds = [e.kind for e in events]
    assert kinds.count("opened") == 3 and kinds.count("refired") == 2
    assert {"acknowledged", "note", "resolved", "reopened"} <= set(kinds)
    assert next(e.data for e in events if e.kind == "opened" and e.data.get("runbook")) == {
        "severity": "warning",
        "runbook": "x",
    }
