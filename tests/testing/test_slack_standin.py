"""The Slack stand-in answers the real slack_sdk client the way Slack's Web API does."""

from __future__ import annotations

import json
import re
from urllib.error import URLError

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from reliability.testing.slack import SlackStandIn

SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*gpu-3* is at 91 C"}}


@pytest.fixture
def client(slack: SlackStandIn) -> WebClient:
    # retry_handlers=[]: each call is one request, so the call log shows exactly what was sent.
    return WebClient(token=slack.token, base_url=slack.api_url, retry_handlers=[])


def api_error(call: object) -> tuple[int, str]:
    """The HTTP status and Slack error code a failing call answered."""
    with pytest.raises(SlackApiError) as failure:
        call()  # type: ignore[operator]
    return failure.value.response.status_code, failure.value.response["error"]


def test_auth_test_names_the_bot_only_for_the_right_token(
    slack: SlackStandIn, client: WebClient
) -> None:
    identity = client.auth_test()
    wrong = WebClient(token="xoxb-not-the-token", base_url=slack.api_url, retry_handlers=[])
    missing = WebClient(base_url=slack.api_url, retry_handlers=[])

    assert identity["ok"] is True
    assert identity["bot_id"] and identity["team"]
    assert api_error(wrong.auth_test) == (200, "invalid_auth")
    assert api_error(missing.auth_test) == (200, "not_authed")


def test_post_by_name_answers_the_channel_id_and_slack_ts(
    slack: SlackStandIn, client: WebClient
) -> None:
    first = client.chat_postMessage(channel="#alerts", text="gpu-3 hot", blocks=[SECTION])
    second = client.chat_postMessage(channel="alerts", text="gpu-4 hot")
    third = client.chat_postMessage(channel=slack.channel_id("alerts"), text="gpu-5 hot")

    assert {first["channel"], second["channel"], third["channel"]} == {slack.channel_id("alerts")}
    timestamps = [first["ts"], second["ts"], third["ts"]]
    assert all(re.fullmatch(r"\d{10}\.\d{6}", ts) for ts in timestamps)
    assert timestamps == sorted(set(timestamps))
    assert [m.text for m in slack.messages("alerts")] == ["gpu-3 hot", "gpu-4 hot", "gpu-5 hot"]
    assert slack.messages("alerts")[0].blocks == [SECTION]


def test_update_edits_the_message_in_place(slack: SlackStandIn, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="#alerts", text="open", blocks=[SECTION])

    answer = client.chat_update(channel=posted["channel"], ts=posted["ts"], text="resolved")

    assert answer["ts"] == posted["ts"] and answer["text"] == "resolved"
    [message] = slack.messages("alerts")
    assert (message.ts, message.text, message.edits) == (posted["ts"], "resolved", 1)
    assert message.blocks == [SECTION]  # left out of the update: kept, as at Slack
    assert message.history == ("open",)


def test_update_needs_a_known_ts_and_the_channel_id(slack: SlackStandIn, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="#alerts", text="open")

    unknown_ts = api_error(
        lambda: client.chat_update(channel=posted["channel"], ts="1700000000.000100", text="x")
    )
    by_name = api_error(lambda: client.chat_update(channel="#alerts", ts=posted["ts"], text="x"))
    other_channel = api_error(
        lambda: client.chat_update(channel=slack.channel_id("oncall"), ts=posted["ts"], text="x")
    )

    assert unknown_ts == (200, "message_not_found")
    assert by_name == (200, "channel_not_found")
    assert other_channel == (200, "message_not_found")
    assert slack.messages("alerts")[0].text == "open"


def test_thread_replies_stay_under_their_parent_in_order(
    slack: SlackStandIn, client: WebClient
) -> None:
    parent = client.chat_postMessage(channel="#alerts", text="open")
    for text in ("refired", "runbook started", "runbook done"):
        client.chat_postMessage(channel="#alerts", text=text, thread_ts=parent["ts"])

    assert [m.ts for m in slack.messages("alerts")] == [parent["ts"]]
    assert [m.text for m in slack.replies(parent["ts"])] == [
        "refired",
        "runbook started",
        "runbook done",
    ]
    assert slack.orphans() == []


def test_a_reply_to_a_message_that_does_not_exist_is_an_orphan(
    slack: SlackStandIn, client: WebClient
) -> None:
    client.chat_postMessage(channel="#alerts", text="lost", thread_ts="1700000000.000100")

    assert [m.text for m in slack.orphans()] == ["lost"]
    assert api_error(
        lambda: client.chat_postMessage(channel="#alerts", text="x", thread_ts="")
    ) == (200, "invalid_thread_ts")


def test_unknown_channel_is_refused_and_nothing_is_posted(
    slack: SlackStandIn, client: WebClient
) -> None:
    assert api_error(lambda: client.chat_postMessage(channel="#nope", text="x")) == (
        200,
        "channel_not_found",
    )
    assert slack.messages() == []
    assert [(c.method, c.channel, c.error) for c in slack.calls()] == [
        ("chat.postMessage", "#nope", "channel_not_found")
    ]


def test_form_encoded_calls_read_like_json_ones(slack: SlackStandIn, client: WebClient) -> None:
    form = {"channel": "alerts", "text": "via form", "blocks": json.dumps([SECTION])}
    client.api_call("chat.postMessage", params=form)
    with_token_field = WebClient(base_url=slack.api_url, retry_handlers=[])
    with_token_field.api_call("chat.postMessage", params={**form, "token": slack.token})

    assert [(m.text, m.blocks) for m in slack.messages("alerts")] == [("via form", [SECTION])] * 2


def test_content_slack_would_reject_is_rejected(client: WebClient) -> None:
    too_long_header = {"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}

    with pytest.warns(UserWarning, match="text"):  # slack_sdk's own warning, before sending
        assert api_error(lambda: client.chat_postMessage(channel="alerts")) == (200, "no_text")
    assert api_error(lambda: client.chat_postMessage(channel="alerts", text="x" * 40_001)) == (
        200,
        "msg_too_long",
    )
    assert api_error(
        lambda: client.chat_postMessage(channel="alerts", text="x", blocks=[too_long_header])
    ) == (200, "invalid_blocks")
    assert api_error(
        lambda: client.api_call(
            "chat.postMessage", params={"channel": "alerts", "text": "x", "blocks": "[{"}
        )
    ) == (200, "invalid_blocks_format")


def test_rate_limit_answers_429_with_retry_after_then_recovers(
    slack: SlackStandIn, client: WebClient
) -> None:
    slack.rate_limit(2, retry_after=7)

    for _ in range(2):
        with pytest.raises(SlackApiError) as limited:
            client.chat_postMessage(channel="#alerts", text="x")
        assert limited.value.response.status_code == 429
        assert limited.value.response.headers["Retry-After"] == "7"
        assert limited.value.response["error"] == "ratelimited"
    client.chat_postMessage(channel="#alerts", text="through")

    assert [c.status for c in slack.calls()] == [429, 429, 200]
    assert [m.text for m in slack.messages("alerts")] == ["through"]


def test_outage_refuses_connections_until_it_ends_on_the_same_url(
    slack: SlackStandIn, client: WebClient
) -> None:
    client.chat_postMessage(channel="#alerts", text="before")
    slack.outage()

    with pytest.raises(URLError, match="refused"):
        client.chat_postMessage(channel="#alerts", text="during")
    slack.outage(False)
    client.chat_postMessage(channel="#alerts", text="after")

    assert [m.text for m in slack.messages("alerts")] == ["before", "after"]
    assert len(slack.calls()) == 2  # the refused call never arrived


def test_outage_with_a_status_answers_it_without_json(
    slack: SlackStandIn, client: WebClient
) -> None:
    slack.outage(status=503)

    with pytest.raises(SlackApiError) as failure:
        client.chat_postMessage(channel="#alerts", text="x")
    slack.outage(False)

    assert failure.value.response.status_code == 503
    assert slack.messages() == []
    client.chat_postMessage(channel="#alerts", text="back")
    assert [m.text for m in slack.messages()] == ["back"]


def test_reset_forgets_messages_and_lifts_failures(slack: SlackStandIn, client: WebClient) -> None:
    client.chat_postMessage(channel="#alerts", text="old")
    slack.rate_limit(5)
    slack.outage()

    slack.reset()
    client.chat_postMessage(channel="#alerts", text="new")

    assert [m.text for m in slack.messages()] == ["new"]
    assert [c.text for c in slack.calls()] == ["new"]


# --- incoming webhooks (what Alertmanager's slack_configs post to) ----------------------------


def test_an_incoming_webhook_posts_to_its_channel_and_answers_ok_in_plain_text(
    slack: SlackStandIn,
) -> None:
    attachment = {"title": "1 firing: ReliabilityDaemonDown", "text": "daemon a:9464 is down"}
    sent = WebhookClient(slack.webhook_url("oncall")).send(attachments=[attachment])

    assert (sent.status_code, sent.body) == (200, "ok")
    assert sent.headers["content-type"].startswith("text/plain")
    (message,) = slack.messages("oncall")
    assert message.attachments == [attachment]
    assert slack.messages("alerts") == []
    assert [c.method for c in slack.calls()] == ["incoming-webhook"]


def test_an_incoming_webhook_refuses_what_slack_refuses(slack: SlackStandIn) -> None:
    url = slack.webhook_url("alerts")
    post = lambda target, **kw: httpx.post(target, timeout=5, **kw)  # noqa: E731
    answers = [
        post(url, content=b"{not json", headers={"content-type": "application/json"}),
        post(url, json={"username": "alertmanager"}),
        post(url.rsplit("/", 1)[0] + "/0000", json={"text": "hi"}),
    ]
    slack.archive("alerts")
    answers.append(post(url, json={"text": "hi"}))

    assert [(a.status_code, a.text) for a in answers] == [
        (400, "invalid_payload"),
        (400, "no_text"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ]
    assert slack.messages() == []
    slack.archive("alerts", archived=False)
    form = post(url, data={"payload": json.dumps({"text": "from a form"})})
    assert (form.status_code, form.text) == (200, "ok")
    assert [m.text for m in slack.messages("alerts")] == ["from a form"]
