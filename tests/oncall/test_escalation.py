"""Escalation on a fake clock: an incident nobody acknowledges calls the on-call person,
then a user group, then starts over; acknowledging stops it, resolving ends it, a silence
holds it; the mention reaches the thread on the Slack stand-in."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from reliability.config import OnCallConfig, SlackConfig
from reliability.incidents import flows as incident_flows
from reliability.incidents import service as incidents
from reliability.incidents import silences
from reliability.notify.dispatcher import Dispatcher
from reliability.notify.slack import SlackClient, SlackNotifier
from reliability.oncall import service as oncall
from reliability.oncall.flows import escalate
from reliability.testing.slack import SlackStandIn

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a Monday, Ana's turn
SLACK = SlackConfig(
    token_env="SLACK_BOT_TOKEN",
    channel="#alerts",
    max_per_second=200,
    escalation={
        "critical": {
            "steps": [{"after": 0}, {"after": "5m", "mention": "oncall"},
                      {"after": "15m", "mention": "S0SRE"}],
            "repeat": "30m",
        }
    },
)  # fmt: skip
ONCALL = OnCallConfig(
    rotations=[
        {"name": "primary", "users": ["U0ANA", "U0BOB"], "start": date(2026, 12, 7),
         "shift": "1d", "handoff": "09:00", "time_zone": "UTC"}
    ]
)  # fmt: skip


def opened(session: Session, *, severity: str = "critical") -> int:
    upsert = incident_flows.open_or_update(
        session,
        fingerprint=f"gpu-hot-{severity}",
        title="gpu-1 is hot",
        severity=severity,
        source="rule",
        labels={"node": "gpu-1"},
        at=T0,
    )
    session.commit()
    return upsert.incident.id


def steps(session: Session, incident_id: int) -> list[tuple[int, int, str | None]]:
    return [
        (e.data["round"], e.data["step"], e.data["mention"])
        for e in incidents.events(session, incident_id=incident_id)
        if e.kind == "escalated"
    ]


def tick(session: Session, minutes: float) -> None:
    escalate(session, slack=SLACK, oncall=ONCALL, now=T0 + timedelta(minutes=minutes))
    session.commit()


def test_an_unacknowledged_incident_steps_through_its_levels_and_repeats(session) -> None:
    incident_id = opened(session)

    for minute in (0, 1, 4.9, 5, 6, 15, 29, 30, 35):
        tick(session, minute)

    assert steps(session, incident_id) == [
        (0, 0, None),
        (0, 1, "U0ANA"),  # the rotation's person at 10:05
        (0, 2, "S0SRE"),
        (1, 0, None),
        (1, 1, "U0ANA"),
    ]


def test_acknowledging_stops_it_and_an_expired_ack_starts_it_over(session) -> None:
    incident_id = opened(session)
    tick(session, 5)
    incident_flows.acknowledge(
        session, incident_id=incident_id, by="ana", at=T0 + timedelta(minutes=6)
    )
    session.commit()

    tick(session, 20)
    assert steps(session, incident_id) == [(0, 1, "U0ANA")]

    incident_flows.expire_acknowledgements(
        session, now=T0 + timedelta(minutes=40), timeout=timedelta(minutes=30)
    )
    session.commit()
    tick(session, 41)
    tick(session, 46)
    assert steps(session, incident_id)[1:] == [(0, 0, None), (0, 1, "U0ANA")]


def test_resolving_ends_it(session) -> None:
    incident_id = opened(session)
    incident_flows.resolve(session, incident_id=incident_id, by="ana", at=T0 + timedelta(minutes=1))
    session.commit()

    tick(session, 16)
    assert steps(session, incident_id) == []


def test_a_silence_holds_it_and_once_ended_only_the_step_now_due_is_posted(session) -> None:
    incident_id = opened(session)
    silences.create(
        session,
        matchers=[silences.Matcher("node", "=", "gpu-1")],
        duration=timedelta(minutes=20),
        by="ana",
        now=T0,
    )
    session.commit()

    for minute in (0, 5, 15, 19):
        tick(session, minute)
    assert steps(session, incident_id) == []
    tick(session, 21)
    assert steps(session, incident_id) == [(0, 2, "S0SRE")]


def test_the_oncall_mention_follows_an_override_and_severities_without_policy_do_not_escalate(
    session,
) -> None:
    oncall.create(
        session,
        rotation="primary",
        user_id="U0DAVE",
        starts_at=T0,
        ends_at=T0 + timedelta(hours=1),
        reason="swap",
        by="bob",
        now=T0,
    )
    critical, warning = opened(session), opened(session, severity="warning")

    tick(session, 5)

    assert steps(session, critical) == [(0, 1, "U0DAVE")]
    assert steps(session, warning) == []


def test_the_mention_reaches_the_incidents_thread(engine, session, slack: SlackStandIn) -> None:
    incident_id = opened(session)
    client = SlackClient(slack.token, base_url=slack.api_url, timeout_s=2)
    dispatcher = Dispatcher(engine, SlackNotifier(client, SLACK))
    dispatcher.run_once()
    tick(session, 5)
    tick(session, 15)

    # Paced (max_per_second): a pass may find the channel not ready yet and send nothing.
    deadline = time.monotonic() + 30
    while len(slack.state.all_messages()) < 3 and time.monotonic() < deadline:
        dispatcher.run_once()
        time.sleep(0.01)

    [root] = slack.messages("alerts")
    replies = [m.text for m in slack.replies(root.ts)]
    assert replies == [
        ":rotating_light: Not acknowledged after 5m: <@U0ANA> (on call)",
        ":rotating_light: Not acknowledged after 15m: <!subteam^S0SRE>",
    ]
    assert incident_id


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ({"steps": [{"after": "5m"}, {"after": "1m"}]}, "in the order of their `after`"),
        ({"steps": [{"after": "5m"}], "repeat": "5m"}, "repeat must be longer"),
        ({"steps": [{"after": "5m", "mention": "ana"}]}, "String should match pattern"),
    ],
)
def test_a_bad_policy_is_refused(policy, says) -> None:
    with pytest.raises(ValueError, match=says):
        SlackConfig(token_env="T", channel="#a", escalation={"critical": policy})
