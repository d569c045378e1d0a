"""Handling an incident from its Slack message: the buttons, clicked on the Slack stand-in,
which posts them signed to `POST /api/v1/slack/interactions` served on loopback, handled by
`oncall/flows.py` through the real slack_sdk client; the dispatcher edits the message."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from outbox_helpers import fire, slack_config
from pydantic import SecretStr
from starlette.applications import Starlette

from reliability import db
from reliability.cli_support import load_config
from reliability.detect.render import RunbookRequest
from reliability.incidents import flows as incident_flows
from reliability.incidents.models import Incident, IncidentEvent, IncidentStatus, Silence
from reliability.notify import blocks
from reliability.notify.dispatcher import Dispatcher
from reliability.notify.models import HandledInteraction
from reliability.notify.slack import SlackClient
from reliability.oncall.flows import SlackActions
from reliability.oncall.route import PATH, interactions_route
from reliability.oncall.socket import SocketTransport
from reliability.runbooks import service as runs
from reliability.runbooks.flows import AutoRunner
from reliability.runbooks.models import RunbookRun
from reliability.ssh import SshPool
from reliability.testing.inference import listen, uvicorn_config
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

ANA, BOB, CAROL = "U0ANA", "U0BOB", "U0CAROL"  # anyone; a responder; in the responders group
RESPONDERS_GROUP = "S0RESP"
WAIT_S = 30.0
SAY = """
description: Say a word in the incident's thread.
params:
  word:
    type: string
    pattern: "[a-z]+"
steps:
  - id: say
    action: notify
    args:
      text: "the word is {word}"
"""
SUGGESTED = "reliability runbook run say --param word=hello"
ASKS = """
description: Ask in the thread, then say so.
steps:
  - id: approve
    action: confirm
    timeout: {timeout}
    args:
      prompt: Drain gpu-1?
      approval: slack
  - id: said
    action: notify
    args:
      text: went ahead
"""


@pytest.fixture(autouse=True)
def people(slack: SlackStandIn) -> None:
    slack.add_user(ANA, "ana")
    slack.add_user(BOB, "bob")
    slack.add_user(CAROL, "carol", groups=[RESPONDERS_GROUP])


@pytest.fixture
def settings():
    return slack_config(
        signing_secret_env="SLACK_SIGNING_SECRET",
        responders=[BOB, RESPONDERS_GROUP],
        runbook_users=[BOB],
    )


class Served:
    """An ASGI app on a loopback port, from a thread, for the stand-in to post to."""

    def __init__(self, app: Starlette) -> None:
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn_config(app))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[sock])), daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            assert time.monotonic() < deadline, "interactions endpoint did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)


@pytest.fixture
def make_endpoint(
    engine: sa.Engine, slack: SlackStandIn, settings
) -> Iterator[Callable[..., tuple[str, SlackActions]]]:
    """make_endpoint(runbooks=None) -> (interactivity URL, its handlers)."""
    made: list[tuple[Served, SlackActions]] = []

    def make(runbooks: AutoRunner | None = None) -> tuple[str, SlackActions]:
        client = SlackClient(slack.token, base_url=slack.api_url, timeout_s=2)
        actions = SlackActions(settings, db.session_factory(engine), client, runbooks=runbooks)
        route = interactions_route(actions, secret=SecretStr(slack.signing_secret))
        served = Served(Starlette(routes=[route]))
        made.append((served, actions))
        return served.url + PATH, actions

    yield make
    for served, actions in made:
        served.stop()
        actions.close()


@pytest.fixture
def endpoint(make_endpoint: Callable[..., tuple[str, SlackActions]]) -> str:
    return make_endpoint()[0]


@pytest.fixture
def posted(session, dispatcher_factory, settings) -> Callable[..., tuple[int, str, Dispatcher]]:
    """posted(labels=..., data=...) -> (incident id, its message's ts, the dispatcher)."""

    def post(**fields) -> tuple[int, str, Dispatcher]:
        dispatcher = dispatcher_factory(settings)
        incident_id = fire(session, f"gpu-hot-{time.monotonic_ns()}", **fields)
        assert dispatcher.run_once() == 1
        [root] = session.execute(
            sa.text("SELECT ref FROM notification_roots WHERE incident_id = :id"),
            {"id": incident_id},
        ).all()
        session.commit()
        return incident_id, root.ref, dispatcher

    return post


def incident(engine: sa.Engine, incident_id: int) -> Incident:
    with db.session_factory(engine)() as s:
        return s.get(Incident, incident_id)


def timeline(engine: sa.Engine, incident_id: int) -> list[IncidentEvent]:
    with db.session_factory(engine)() as s:
        statement = sa.select(IncidentEvent).where(IncidentEvent.incident_id == incident_id)
        return list(s.scalars(statement.order_by(IncidentEvent.id)))


def buttons(slack: SlackStandIn, ts: str) -> list[str]:
    return [
        element["action_id"]
        for block in slack.message(ts).blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def test_an_incident_message_carries_its_buttons_and_loses_them_once_resolved(
    session, slack: SlackStandIn, posted
) -> None:
    incident_id, ts, dispatcher = posted(data={"runbook": SUGGESTED})

    assert buttons(slack, ts) == ["acknowledge", "resolve", "silence", "run"]
    [actions] = [b for b in slack.message(ts).blocks if b["type"] == "actions"]
    labels = [element["text"]["text"] for element in actions["elements"]]
    assert labels == ["Acknowledge", "Resolve", "Silence gpu-1 1 h", "Run say"]

    incident_flows.resolve(session, incident_id=incident_id, by="cli")
    session.commit()
    dispatcher.run_once()
    assert buttons(slack, ts) == []


def test_without_a_signing_secret_messages_have_no_buttons(
    session, slack: SlackStandIn, dispatcher_factory
) -> None:
    dispatcher = dispatcher_factory(slack_config())
    fire(session, "gpu-hot")
    dispatcher.run_once()

    [message] = slack.messages("alerts")
    assert all(block["type"] != "actions" for block in message.blocks)


def test_acknowledge_records_the_slack_user_and_edits_the_message_in_place(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted
) -> None:
    incident_id, ts, dispatcher = posted()

    delivery = slack.click(endpoint, ts, "acknowledge", ANA)
    dispatcher.run_once()

    assert delivery.status == 200
    acknowledged = incident(engine, incident_id)
    assert (acknowledged.status, acknowledged.acknowledged_by) == ("acknowledged", "@ana")
    event = timeline(engine, incident_id)[-1]
    assert (event.kind, event.data) == ("acknowledged", {"slack_user": ANA})
    message = slack.message(ts)
    assert message.edits == 1 and len(slack.messages("alerts")) == 1
    assert "Acknowledged by @ana" in str(message.blocks)
    assert buttons(slack, ts) == ["resolve", "silence"]  # no second Acknowledge


def test_a_retried_delivery_acts_once(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted
) -> None:
    incident_id, ts, _ = posted()

    first = slack.click(endpoint, ts, "silence", ANA)
    again = slack.redeliver(first)

    assert (first.status, again.status) == (200, 200)
    with db.session_factory(engine)() as s:
        assert len(s.scalars(sa.select(Silence)).all()) == 1
        assert len(s.scalars(sa.select(HandledInteraction)).all()) == 1
    assert [e.kind for e in timeline(engine, incident_id)] == ["opened", "silenced"]


def test_silence_mutes_the_incidents_node_for_an_hour_and_says_so_privately(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted
) -> None:
    incident_id, ts, _ = posted()

    slack.click(endpoint, ts, "silence", ANA)

    with db.session_factory(engine)() as s:
        [silence] = s.scalars(sa.select(Silence)).all()
    assert silence.matchers == [{"label": "node", "op": "=", "value": "gpu-1"}]
    assert (silence.ends_at - silence.starts_at).total_seconds() == 3600
    assert silence.created_by == "@ana"
    [answer] = wait_for("the private answer", slack.ephemerals, WAIT_S)
    assert answer.user == ANA and "node=gpu-1 for 1 h" in answer.text
    assert timeline(engine, incident_id)[-1].data["slack_user"] == ANA


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"timestamp": int(time.time()) - 6 * 60}, id="replayed-after-5-minutes"),
        pytest.param({"secret": "not-the-signing-secret"}, id="wrong-secret"),
    ],
)
def test_a_request_not_signed_now_by_slack_is_refused_with_401_and_changes_nothing(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted, headers, caplog
) -> None:
    incident_id, ts, _ = posted()

    delivery = slack.click(endpoint, ts, "acknowledge", ANA, **headers)

    assert delivery.status == 401
    assert incident(engine, incident_id).status == IncidentStatus.open
    assert "refused with 401" in caplog.text


def test_a_replay_of_an_old_delivery_is_refused(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted
) -> None:
    incident_id, ts, _ = posted()
    old = slack.click(endpoint, ts, "acknowledge", ANA, timestamp=int(time.time()) - 301)

    assert slack.redeliver(old).status == 401
    assert incident(engine, incident_id).status == IncidentStatus.open


def test_missing_signature_headers_answer_401(endpoint: str, slack: SlackStandIn) -> None:
    import httpx

    answer = httpx.post(endpoint, content=b"payload=%7B%7D", timeout=5)
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"type": "block_actions", "user": {"id": ANA}}, "exactly one action"),
        ({"type": "shortcut", "user": {"id": ANA}}, "not handled"),
        ({"type": "block_actions", "trigger_id": "1.2.x", "user": {"id": ANA},
          "actions": [{"action_id": "reboot_the_world", "value": "1"}]}, "unknown action"),
        ({"type": "block_actions", "trigger_id": "1.2.x", "user": {"id": ANA},
          "actions": [{"action_id": "acknowledge", "value": "999999"}]}, "no incident 999999"),
    ],
)  # fmt: skip
def test_a_signed_payload_we_cannot_act_on_answers_400_with_a_log_line(
    slack: SlackStandIn, endpoint: str, payload, why: str, caplog
) -> None:
    delivery = slack.deliver(endpoint, payload)

    assert delivery.status == 400 and why in delivery.answer
    assert "refused with 400" in caplog.text


def test_resolve_is_for_responders_and_a_refusal_is_private_and_recorded(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted
) -> None:
    incident_id, ts, dispatcher = posted()

    assert slack.click(endpoint, ts, "resolve", ANA).status == 200

    assert incident(engine, incident_id).status == IncidentStatus.open
    refused = timeline(engine, incident_id)[-1]
    assert (refused.kind, refused.actor, refused.data["slack_user"]) == ("refused", "@ana", ANA)
    [answer] = wait_for("the refusal", slack.ephemerals, WAIT_S)
    assert answer.user == ANA and "slack.responders" in answer.text
    dispatcher.run_once()
    assert slack.message(ts).edits == 0  # nobody else sees anything

    slack.click(endpoint, ts, "resolve", CAROL)  # a member of the responders' user group
    dispatcher.run_once()
    resolved = incident(engine, incident_id)
    assert (resolved.status, resolved.resolved_by) == ("resolved", "@carol")
    assert "Resolved by @carol" in str(slack.message(ts).blocks)


def test_a_second_acknowledge_changes_nothing_and_says_who_has_it(
    engine: sa.Engine, slack: SlackStandIn, endpoint: str, posted
) -> None:
    incident_id, ts, _ = posted()
    slack.click(endpoint, ts, "acknowledge", ANA)
    slack.click(endpoint, ts, "acknowledge", BOB)  # the old message, still with its button

    assert incident(engine, incident_id).acknowledged_by == "@ana"
    [answer] = wait_for("the answer", slack.ephemerals, WAIT_S)
    assert answer.user == BOB and "already acknowledged by @ana" in answer.text


@pytest.fixture
def runner(tmp_path: Path, database_url: str, monkeypatch) -> Iterator[AutoRunner]:
    directory = tmp_path / "runbooks"
    directory.mkdir()
    (directory / "say.yaml").write_text(textwrap.dedent(SAY).lstrip())
    (directory / "asks.yaml").write_text(textwrap.dedent(ASKS).lstrip().format(timeout="20s"))
    (directory / "asks-briefly.yaml").write_text(
        textwrap.dedent(ASKS).lstrip().format(timeout="2s")
    )
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-unused")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "unused")
    path = tmp_path / "reliability.yaml"
    config = {
        "database": {"url": database_url},
        "slack": {"token_env": "SLACK_BOT_TOKEN", "channel": "#alerts"},
        "runbooks_dir": str(directory),
    }
    path.write_text(yaml.safe_dump(config))
    runner = AutoRunner(load_config(path), db.LazyEngine(database_url), SshPool())
    runner.start()
    yield runner
    runner.stop()


def test_run_shows_the_plan_and_runs_the_runbook_once_confirmed(
    engine: sa.Engine, slack: SlackStandIn, make_endpoint, posted, runner: AutoRunner
) -> None:
    endpoint, _ = make_endpoint(runbooks=runner)
    incident_id, ts, dispatcher = posted(data={"runbook": SUGGESTED})

    assert slack.click(endpoint, ts, "run", BOB).status == 200

    [view] = wait_for("the confirmation", slack.views, WAIT_S)
    shown = str(view.view["blocks"])
    assert "say word=hello" in shown and "1. say (notify)" in shown
    with db.session_factory(engine)() as s:
        assert s.scalars(sa.select(RunbookRun)).all() == []  # nothing runs before the submit

    assert slack.submit(endpoint, view.id, BOB).status == 200

    def finished() -> list[RunbookRun]:
        with db.session_factory(engine)() as s:
            return [r for r in s.scalars(sa.select(RunbookRun)) if r.ended_at is not None]

    [run] = wait_for("the run", finished, WAIT_S)
    assert (run.runbook, run.status, run.started_by) == ("say", "succeeded", "@bob")
    notes = [e.message for e in timeline(engine, incident_id) if e.kind == "note"]
    assert any("the word is hello" in (n or "") for n in notes)

    def said() -> bool:
        dispatcher.run_once()
        return any("the word is hello" in m.text for m in slack.replies(ts))

    wait_for("the run's progress in the thread", said, WAIT_S)


def test_run_is_for_runbook_users(
    engine: sa.Engine, slack: SlackStandIn, make_endpoint, posted, runner: AutoRunner
) -> None:
    endpoint, _ = make_endpoint(runbooks=runner)
    incident_id, ts, _ = posted(data={"runbook": SUGGESTED})

    slack.click(endpoint, ts, "run", CAROL)  # a responder, not a runbook user

    [answer] = wait_for("the refusal", slack.ephemerals, WAIT_S)
    assert answer.user == CAROL and "slack.runbook_users" in answer.text
    assert slack.views() == []
    assert timeline(engine, incident_id)[-1].kind == "refused"


def test_a_button_that_is_not_on_the_message_cannot_be_clicked(
    slack: SlackStandIn, endpoint: str, posted
) -> None:
    _, ts, _ = posted()  # no suggested runbook: no Run button
    with pytest.raises(KeyError):
        slack.click(endpoint, ts, "run", BOB)


def test_the_suggested_command_parses_back_to_the_runbook_and_its_parameters() -> None:
    assert blocks.parse_runbook_command(
        "reliability runbook run node-failover --param node=gpu-1 --param 'why=hot GPU'"
    ) == ("node-failover", {"node": "gpu-1", "why": "hot GPU"})
    with pytest.raises(ValueError):
        blocks.parse_runbook_command("reliability runbook run x; rm -rf /")


@pytest.fixture
def socket_actions(engine: sa.Engine, slack: SlackStandIn, settings) -> Iterator[SlackActions]:
    """Handlers connected to the stand-in over Socket Mode (the real slack_sdk client)."""
    client = SlackClient(slack.token, base_url=slack.api_url, timeout_s=2)
    actions = SlackActions(settings, db.session_factory(engine), client)
    transport = SocketTransport(
        actions, app_token=SecretStr(slack.app_token), base_url=slack.api_url
    )
    transport.start()
    assert slack.wait_socket()
    yield actions
    transport.stop()
    actions.close()


def test_over_socket_mode_acknowledge_is_acked_in_time_and_edits_the_message(
    engine: sa.Engine, slack: SlackStandIn, socket_actions: SlackActions, posted
) -> None:
    incident_id, ts, dispatcher = posted()

    envelope = slack.socket_click(ts, "acknowledge", ANA)
    dispatcher.run_once()

    assert envelope.acked_at is not None and envelope.acked_at - envelope.sent_at < 3
    assert incident(engine, incident_id).acknowledged_by == "@ana"
    message = slack.message(ts)
    assert message.edits == 1 and "Acknowledged by @ana" in str(message.blocks)


def test_over_socket_mode_a_redelivered_envelope_acts_once(
    engine: sa.Engine, slack: SlackStandIn, socket_actions: SlackActions, posted
) -> None:
    incident_id, ts, _ = posted()

    first = slack.socket_click(ts, "silence", ANA)
    again = slack.socket_redeliver(first)

    assert first.acked_at is not None and again.acked_at is not None
    with db.session_factory(engine)() as s:
        assert len(s.scalars(sa.select(Silence)).all()) == 1
    assert [e.kind for e in timeline(engine, incident_id)] == ["opened", "silenced"]


def test_over_socket_mode_a_refusal_is_private_too(
    engine: sa.Engine, slack: SlackStandIn, socket_actions: SlackActions, posted
) -> None:
    incident_id, ts, _ = posted()

    assert slack.socket_click(ts, "resolve", ANA).acked_at is not None

    assert incident(engine, incident_id).status == IncidentStatus.open
    [answer] = wait_for("the refusal", slack.ephemerals, WAIT_S)
    assert answer.user == ANA and "slack.responders" in answer.text


def test_socket_mode_retries_its_first_connection_with_backoff_and_one_line_per_attempt(
    engine: sa.Engine,
    slack: SlackStandIn,
    settings,
    posted,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Slack unreachable, then refusing `apps.connections.open` twice, then the WebSocket
    once: the daemon's transport keeps trying (start() returned at once), then takes clicks
    as usual."""
    slack.outage()
    slack.fail_next(2, "internal_error", method="apps.connections.open")
    slack.refuse_sockets(1)
    client = SlackClient(slack.token, base_url=slack.api_url, timeout_s=2)
    actions = SlackActions(settings, db.session_factory(engine), client)
    transport = SocketTransport(
        actions,
        app_token=SecretStr(slack.app_token),
        base_url=slack.api_url,
        retry_base_s=0.05,
        retry_cap_s=0.2,
    )
    caplog.set_level(logging.DEBUG, logger="reliability.oncall")

    def failures() -> list[str]:
        return [m for r in caplog.records if "not connected (attempt" in (m := r.getMessage())]

    try:
        transport.start()
        wait_for("a first failed attempt", failures, WAIT_S)
        slack.outage(False)
        assert slack.wait_socket(WAIT_S)
        incident_id, ts, _ = posted()
        assert slack.socket_click(ts, "acknowledge", ANA).acked_at is not None
    finally:
        transport.stop()
        actions.close()

    assert incident(engine, incident_id).acknowledged_by == "@ana"
    opened = [c for c in slack.calls("apps.connections.open")]
    assert [c.ok for c in opened] == [False, False, True, True]
    # One line per failed attempt, numbered, each saying why: refused while Slack was away
    # (once or more), then the two errors, then the handshake.
    failed = failures()
    refused = len(failed) - 3
    assert refused >= 1 and all("URLError" in f and "refused" in f for f in failed[:refused])
    assert [f.split("attempt ")[1].split(")")[0] for f in failed[refused:]] == [
        f"{refused + 1}: apps.connections.open answered internal_error",
        f"{refused + 2}: apps.connections.open answered internal_error",
        f"{refused + 3}: WebSocket: handshake refused",
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert slack.app_token not in logged
    # slack_sdk's own lines about the failed attempts are left out: ours say it once.
    assert not [r for r in caplog.records if "slack_sdk" in r.name and r.levelno >= 30]


def test_socket_mode_refuses_the_bot_token(slack: SlackStandIn) -> None:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    with pytest.raises(SlackApiError) as refused:
        WebClient(base_url=slack.api_url).apps_connections_open(app_token=slack.token)
    assert refused.value.response["error"] == "not_allowed_token_type"


def ask(slack: SlackStandIn, dispatcher: Dispatcher, ts: str) -> str:
    """The ts of the runbook's question in the incident's thread, once posted."""

    def question() -> str | None:
        dispatcher.run_once()
        return next((m.ts for m in slack.replies(ts) if "Drain gpu-1?" in m.text), None)

    return str(wait_for("the question in the thread", question, WAIT_S))


def finished_run(engine: sa.Engine) -> RunbookRun:
    def ended() -> list[RunbookRun]:
        with db.session_factory(engine)() as s:
            return [r for r in s.scalars(sa.select(RunbookRun)) if r.ended_at is not None]

    [run] = wait_for("the run's end", ended, WAIT_S)
    return run


def step_results(engine: sa.Engine, run_id: int) -> list[str]:
    with db.session_factory(engine)() as s:
        return [entry["result"] for unit in runs.units(s, run_id=run_id) for entry in unit.log]


def test_an_approval_step_waits_in_the_thread_until_an_allowed_user_approves(
    engine: sa.Engine, slack: SlackStandIn, make_endpoint, posted, runner: AutoRunner
) -> None:
    endpoint, _ = make_endpoint(runbooks=runner)
    incident_id, ts, dispatcher = posted()
    runner.run_for("@bob", incident_id, RunbookRequest("asks", {}, auto=False))
    question = ask(slack, dispatcher, ts)

    slack.click(endpoint, question, "approve", CAROL)  # a responder, not a runbook user
    [refusal] = wait_for("the refusal", slack.ephemerals, WAIT_S)
    assert refusal.user == CAROL and "slack.runbook_users" in refusal.text
    slack.click(endpoint, question, "approve", BOB)

    run = finished_run(engine)
    assert run.status == "succeeded"
    assert step_results(engine, run.id)[0] == "approved in Slack by @bob"
    slack.click(endpoint, question, "reject", BOB)  # a late second answer changes nothing
    answers = wait_for("the answer", lambda: slack.ephemerals()[1:], WAIT_S)
    assert "Already approved by @bob" in answers[0].text


def test_a_rejected_approval_fails_the_run_and_says_who(
    engine: sa.Engine, slack: SlackStandIn, make_endpoint, posted, runner: AutoRunner
) -> None:
    endpoint, _ = make_endpoint(runbooks=runner)
    incident_id, ts, dispatcher = posted()
    runner.run_for("@bob", incident_id, RunbookRequest("asks", {}, auto=False))

    slack.click(endpoint, ask(slack, dispatcher, ts), "reject", BOB)

    run = finished_run(engine)
    assert run.status == "failed" and "rejected in Slack by @bob" in (run.reason or "")
    notes = [e.message or "" for e in timeline(engine, incident_id) if e.kind == "note"]
    assert not any("went ahead" in note for note in notes)


def test_an_approval_nobody_answers_fails_closed_at_the_step_timeout(
    engine: sa.Engine, slack: SlackStandIn, make_endpoint, posted, runner: AutoRunner
) -> None:
    endpoint, _ = make_endpoint(runbooks=runner)
    incident_id, ts, dispatcher = posted()
    runner.run_for("@bob", incident_id, RunbookRequest("asks-briefly", {}, auto=False))
    question = ask(slack, dispatcher, ts)

    run = finished_run(engine)
    assert run.status == "failed"
    assert "nobody answered in Slack in time" in (run.reason or "")
    slack.click(endpoint, question, "approve", BOB)
    [late] = wait_for("the answer", slack.ephemerals, WAIT_S)
    assert "Too late" in late.text
