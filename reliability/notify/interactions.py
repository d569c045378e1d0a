"""Slack interactions at the wire: a request's v0 signature, and the payload of a click on an
incident message's button (`blocks.py` draws them) or of the runbook confirmation it opens.

    verify(secret, body, headers, now)  BadSignature (-> 401): missing, malformed or wrong
                                        signature, or a timestamp over 5 minutes away
    parse(payload)                      a `Click`; BadInteraction (-> 400) for anything
                                        that is not one of our buttons or views

Both transports (HTTP here, Socket Mode later) hand the parsed click to the same handlers
(`oncall/flows.py`). Nothing here touches the database or Slack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk.signature import Clock, SignatureVerifier

from reliability.notify import blocks

MAX_AGE_S = 5 * 60
# The runbook confirmation's modal: its submission runs the incident's runbook.
RUN_VIEW = "run"
CONFIRM_RUN = "confirm_run"
ACTIONS = frozenset({blocks.ACKNOWLEDGE, blocks.RESOLVE, blocks.SILENCE, blocks.RUN})
DECISIONS = frozenset({blocks.APPROVE, blocks.REJECT})


class BadSignature(Exception):
    """The request is not provably from Slack, or is a replay of an old one."""


class BadInteraction(Exception):
    """A signed payload we cannot act on: not ours, malformed, or for no known incident."""


@dataclass(frozen=True)
class Click:
    """One person's click (or modal submission) on an incident's message.

    `key` identifies the delivery (Slack's `trigger_id`, or the view's id and hash for a
    submission): the same click delivered twice has the same key. `channel` is where an
    ephemeral answer goes; `trigger_id` opens a modal (valid for 3 s).
    """

    action: str
    incident_id: int
    user: str
    username: str
    key: str
    channel: str | None
    trigger_id: str | None
    approval_id: int | None = None  # Approve / Reject: the runbook's question


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
    """Slack's v0 signature: HMAC-SHA256 of `v0:{timestamp}:{body}` under the signing secret,
    compared in constant time (slack_sdk's `SignatureVerifier`). BadSignature otherwise."""
    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if not timestamp or not signature:
        raise BadSignature("missing X-Slack-Signature or X-Slack-Request-Timestamp")
    if not timestamp.isdigit():
        raise BadSignature("malformed X-Slack-Request-Timestamp")
    if abs(now - int(timestamp)) > MAX_AGE_S:
        raise BadSignature(f"timestamp {timestamp} is over {MAX_AGE_S} s away (a replay?)")
    verifier = SignatureVerifier(secret, clock=_Fixed(now))
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise BadSignature("wrong signature")


class _Fixed(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def parse(payload: Any) -> Click:
    """The click in an interaction payload (`block_actions` or `view_submission`)."""
    if not isinstance(payload, dict):
        raise BadInteraction("payload is not a JSON object")
    user = payload.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        raise BadInteraction("payload has no user.id")
    username = str(user.get("username") or user.get("name") or user["id"])
    kind = payload.get("type")
    if kind == "block_actions":
        return _block_action(payload, user["id"], username)
    if kind == "view_submission":
        return _view_submission(payload, user["id"], username)
    raise BadInteraction(f"payload type {kind!r} is not handled")


def _block_action(payload: dict[str, Any], user: str, username: str) -> Click:
    actions = payload.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        raise BadInteraction("block_actions payload must carry exactly one action")
    action = actions[0]
    if action.get("action_id") not in ACTIONS | DECISIONS:
        raise BadInteraction(f"unknown action {action.get('action_id')!r}")
    value, approval_id = action.get("value"), None
    if action["action_id"] in DECISIONS:
        value, _, question = str(value).partition(":")
        approval_id = _incident_id(question)
    trigger_id = payload.get("trigger_id")
    if not isinstance(trigger_id, str) or not trigger_id:
        raise BadInteraction("block_actions payload has no trigger_id")
    channel = payload.get("channel")
    channel_id = channel.get("id") if isinstance(channel, dict) else None
    return Click(
        action=action["action_id"],
        incident_id=_incident_id(value),
        user=user,
        username=username,
        key=f"{trigger_id}:{action['action_id']}",
        channel=channel_id if isinstance(channel_id, str) else None,
        trigger_id=trigger_id,
        approval_id=approval_id,
    )


def _view_submission(payload: dict[str, Any], user: str, username: str) -> Click:
    view = payload.get("view")
    if not isinstance(view, dict) or view.get("callback_id") != RUN_VIEW:
        raise BadInteraction("view_submission of a view that is not ours")
    try:
        metadata = json.loads(view.get("private_metadata") or "")
    except ValueError:
        raise BadInteraction("view's private_metadata is not JSON") from None
    if not isinstance(metadata, dict):
        raise BadInteraction("view's private_metadata is not a JSON object")
    channel = metadata.get("channel")
    return Click(
        action=CONFIRM_RUN,
        incident_id=_incident_id(metadata.get("incident")),
        user=user,
        username=username,
        key=f"view:{view.get('id')}:{view.get('hash')}",
        channel=channel if isinstance(channel, str) else None,
        trigger_id=None,
    )


def _incident_id(value: Any) -> int:
    text = str(value) if isinstance(value, int | str) else ""
    if not text.isdigit():
        raise BadInteraction(f"no id in {value!r}")
    return int(text)


def run_view(
    *, incident_id: int, channel: str | None, title: str, lines: list[str]
) -> dict[str, Any]:
    """The confirmation modal: the plan's summary, and a Run button that submits it."""
    summary = "\n".join(lines)
    return {
        "type": "modal",
        "callback_id": RUN_VIEW,
        "private_metadata": json.dumps({"incident": incident_id, "channel": channel}),
        "title": {"type": "plain_text", "text": "Run runbook"},
        "submit": {"type": "plain_text", "text": "Run"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": blocks.code_block(summary)},
            },
        ],
    }
