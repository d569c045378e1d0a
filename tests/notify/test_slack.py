"""The Slack seam: one attempt per call, and every failure says whether a retry can help."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr

from reliability.notify.base import Blocked, NotifyError, Permanent, RateLimited, Transient
from reliability.notify.slack import SlackClient
from reliability.testing.slack import SlackStandIn

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*gpu-3* at 91 C"}}]


@pytest.fixture
def notifier(slack: SlackStandIn) -> SlackClient:
    return SlackClient(SecretStr(slack.token), base_url=slack.api_url, timeout_s=5)


def failure(call: Callable[[], object]) -> NotifyError:
    with pytest.raises(NotifyError) as raised:
        call()
    return raised.value


def test_check_names_the_bot(notifier: SlackClient) -> None:
    identity = notifier.check()

    assert identity.bot_id and identity.team and identity.user


def test_post_then_update_edits_one_message(slack: SlackStandIn, notifier: SlackClient) -> None:
    posted = notifier.post("#alerts", "gpu-3 hot", BLOCKS)
    notifier.update(posted.channel, posted.ts, "gpu-3 resolved", [])

    assert posted.channel == slack.channel_id("alerts")  # the ID, which chat.update needs
    [message] = slack.messages("alerts")
    assert (message.ts, message.text, message.blocks, message.edits) == (
        posted.ts,
        "gpu-3 resolved",
        [],
        1,
    )


def test_thread_replies_arrive_in_order_under_the_alert(
    slack: SlackStandIn, notifier: SlackClient
) -> None:
    alert = notifier.post("#alerts", "gpu-3 hot", BLOCKS)
    for note in ("refired", "runbook started"):
        notifier.post(alert.channel, note, thread_ts=alert.ts)

    assert [m.ts for m in slack.messages("alerts")] == [alert.ts]
    assert [m.text for m in slack.replies(alert.ts)] == ["refired", "runbook started"]


def test_a_bad_token_blocks_everything(slack: SlackStandIn) -> None:
    wrong = SlackClient("xoxb-wrong-token", base_url=slack.api_url, timeout_s=5)

    for call in (wrong.check, lambda: wrong.post("#alerts", "x")):
        error = failure(call)
        assert isinstance(error, Blocked) and not error.retryable
        assert (error.reason, error.destination) == ("invalid_auth", None)
    assert slack.messages() == []


def test_an_unknown_channel_or_message_is_permanent(
    slack: SlackStandIn, notifier: SlackClient
) -> None:
    posted = notifier.post("#alerts", "x")

    no_channel = failure(lambda: notifier.post("#no-such-channel", "x"))
    no_message = failure(lambda: notifier.update(posted.channel, "1700000000.000100", "x"))

    assert isinstance(no_channel, Blocked) and no_channel.reason == "channel_not_found"
    assert no_channel.destination == "#no-such-channel"
    assert isinstance(no_message, Permanent) and no_message.reason == "message_not_found"


def test_429_is_rate_limited_with_retry_after_and_not_retried_inside(
    slack: SlackStandIn, notifier: SlackClient
) -> None:
    slack.rate_limit(1, retry_after=7)

    error = failure(lambda: notifier.post("#alerts", "x"))

    assert isinstance(error, RateLimited) and error.retryable
    assert error.retry_after == 7.0
    assert len(slack.calls()) == 1  # the outbox decides when to try again, not slack_sdk
    assert slack.messages() == []


def test_refused_connections_are_transient_and_the_next_call_goes_through(
    slack: SlackStandIn, notifier: SlackClient
) -> None:
    slack.outage()
    error = failure(lambda: notifier.post("#alerts", "x"))
    slack.outage(False)

    assert isinstance(error, Transient) and error.retryable
    assert "refused" in error.reason
    assert slack.calls() == []  # slack_sdk's connection-error retry is off
    notifier.post("#alerts", "after the outage")
    assert [m.text for m in slack.messages()] == ["after the outage"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_answers_are_transient(slack: SlackStandIn, notifier: SlackClient, status: int) -> None:
    slack.outage(status=status)

    error = failure(lambda: notifier.post("#alerts", "x"))

    assert isinstance(error, Transient) and error.reason == f"HTTP {status}"
    assert len(slack.calls()) == 1


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("internal_error", Transient),
        ("fatal_error", Transient),
        ("service_unavailable", Transient),
        ("ratelimited", RateLimited),
        ("not_in_channel", Blocked),
        ("is_archived", Blocked),
        ("token_revoked", Blocked),
        ("account_inactive", Blocked),
        ("invalid_blocks", Permanent),
        ("some_code_slack_adds_later", Permanent),
    ],
)
def test_slack_error_codes_say_whether_to_retry(
    slack: SlackStandIn, notifier: SlackClient, code: str, kind: type[NotifyError]
) -> None:
    slack.fail_next(1, code)

    error = failure(lambda: notifier.post("#alerts", "x"))

    assert type(error) is kind
    assert kind is RateLimited or error.reason == code
    if kind is Blocked:  # a channel's refusal holds that channel; the token's, everything
        assert error.destination == (
            "#alerts" if code in ("not_in_channel", "is_archived") else None
        )


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers, like a hung proxy."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api/"


def test_a_slack_that_never_answers_is_transient_after_the_deadline(silent_server: str) -> None:
    notifier = SlackClient("xoxb-any", base_url=silent_server, timeout_s=0.2)

    error = failure(lambda: notifier.post("#alerts", "x"))

    assert isinstance(error, Transient) and error.reason == "timed out"


def test_the_token_never_appears_in_errors_or_logs(
    slack: SlackStandIn, caplog: pytest.LogCaptureFixture, silent_server: str
) -> None:
    caplog.set_level(logging.DEBUG)  # slack_sdk logs requests and answers at DEBUG
    wrong_token = "xoxb-1111-2222-wrongwrongwrong"
    good = SlackClient(slack.token, base_url=slack.api_url, timeout_s=5)
    wrong = SlackClient(SecretStr(wrong_token), base_url=slack.api_url, timeout_s=5)
    hung = SlackClient(slack.token, base_url=silent_server, timeout_s=0.2)
    errors: list[NotifyError] = [failure(wrong.check)]
    slack.rate_limit(1, retry_after=3)
    errors.append(failure(lambda: good.post("#alerts", "x")))
    slack.fail_next(1, "internal_error")
    errors.append(failure(lambda: good.post("#alerts", "x")))
    slack.outage(status=503)
    errors.append(failure(lambda: good.post("#alerts", "x")))
    slack.outage()
    errors.append(failure(lambda: good.post("#alerts", "x")))
    errors.append(failure(lambda: hung.post("#alerts", "x")))

    assert len({type(e) for e in errors}) == 3  # Permanent, RateLimited, Transient all seen
    assert caplog.records, "slack_sdk's DEBUG logging was not captured"
    shown = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(good), repr(wrong)]
    shown += [record.getMessage() for record in caplog.records]
    for secret in (slack.token, wrong_token):
        assert not [text for text in shown if secret in text]
    assert all(e.__cause__ is None and e.__suppress_context__ for e in errors)
