"""Slack, the first notifier: `SlackClient` is the one seam to Slack's Web API (post, update,
check), `SlackNotifier` the `Notifier` (notify/base.py) that the dispatcher sends through.

Every failure leaves as one of the notifier errors, so the outbox dispatcher decides with a
single ``except`` what happens to the row:

* ``RateLimited(retry_after)``: HTTP 429 or ``ratelimited``; wait ``retry_after`` seconds.
* ``Transient(reason)``: the network, a timeout, HTTP 5xx, or Slack's ``internal_error``,
  ``fatal_error``, ``service_unavailable``, ``request_timeout``; retry with backoff.
* ``Permanent(reason)``: everything else (bad token, unknown channel, invalid blocks, a
  message that is gone...); retrying cannot help, so the row is marked failed and logged.

slack_sdk's own retry handlers are switched off: a hidden retry inside a call would break
the outbox's per-channel pacing and its honouring of ``Retry-After``. The token is never
part of an error message; ``reason`` is a Slack error code or a network error's text.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse

from reliability.config import SlackConfig
from reliability.notify import blocks
from reliability.notify.base import (
    Notification,
    NotifyError,
    Permanent,
    RateLimited,
    Root,
    Transient,
    pages,
    updates_root,
)

SLACK_API_URL = "https://slack.com/api/"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_AFTER_S = 1.0
RATE_LIMIT_CODES = frozenset({"ratelimited", "rate_limited"})
TRANSIENT_CODES = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
    | {"team_added_to_org"}  # the workspace is being migrated; Slack says to retry later
)
REDACTED = "xox?-<redacted>"

Blocks = list[dict[str, Any]]


class Posted(NamedTuple):
    """Where a message landed. ``channel`` is the ID: ``chat.update`` accepts no name."""

    channel: str
    ts: str


@dataclass(frozen=True)
class SlackIdentity:
    """Who the token speaks as, from ``auth.test``."""

    team: str
    user: str
    bot_id: str | None
    url: str


class SlackClient:
    """Posts and updates Slack messages through ``slack_sdk.WebClient``, one attempt per call.

    ``base_url`` points it at a stand-in (``SlackStandIn.api_url``); ``timeout_s`` bounds
    each call, connecting and reading together.
    """

    def __init__(
        self,
        token: SecretStr | str,
        *,
        base_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._secret = secret.strip()
        self.base_url = base_url or SLACK_API_URL
        # retry_handlers=[]: the default would silently retry connection errors once.
        self._client = WebClient(
            token=self._secret,
            base_url=self.base_url,
            timeout=timeout_s,  # type: ignore[arg-type]  # urllib takes a float
            retry_handlers=[],
        )

    def __repr__(self) -> str:
        return f"SlackClient(base_url={self.base_url!r})"

    def check(self) -> SlackIdentity:
        """Verify the token with ``auth.test``; Permanent if Slack rejects it."""
        data = self._call("auth_test")
        return SlackIdentity(
            team=str(data.get("team", "")),
            user=str(data.get("user", "")),
            bot_id=data.get("bot_id"),
            url=str(data.get("url", "")),
        )

    def post(
        self,
        channel: str,
        text: str,
        blocks: Blocks | None = None,
        thread_ts: str | None = None,
        *,
        broadcast: bool = False,
    ) -> Posted:
        """Post a message, or a reply in the thread of ``thread_ts``; with ``broadcast`` the
        reply is also shown in the channel, where a mention in it reaches everyone.

        ``text`` is required even with blocks: it is what notifications and screen readers
        show. Link previews are off so an alert stays one screen tall.
        """
        data = self._call(
            "chat_postMessage",
            channel=channel,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            reply_broadcast=broadcast or None,
            unfurl_links=False,
            unfurl_media=False,
        )
        return Posted(channel=str(data["channel"]), ts=str(data["ts"]))

    def update(self, channel: str, ts: str, text: str, blocks: Blocks | None = None) -> None:
        """Replace the text (and blocks, when given) of message ``ts``; ``channel`` is an ID."""
        self._call("chat_update", channel=channel, ts=ts, text=text, blocks=blocks)

    def _call(self, method: str, **arguments: Any) -> SlackResponse:
        """Call one WebClient method; every failure becomes a NotifyError without the token."""
        try:
            return getattr(self._client, method)(**arguments)
        except SlackApiError as exc:
            # `from None`: the response object carries the request's headers, token included.
            raise classify_response(exc.response, redact=self._redact) from None
        except (OSError, http.client.HTTPException) as exc:
            # URLError, refused or reset connections, timeouts, a connection dropped mid-answer.
            raise Transient(self._redact(_network_reason(exc))) from None
        except SlackClientError as exc:
            raise Permanent(self._redact(f"client error: {exc}")) from None

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, REDACTED) if self._secret else text


def route(slack: SlackConfig, *, severity: str, labels: Mapping[str, str]) -> str:
    """The channel for a new incident: the first route whose severities and services (each
    empty for any) match, else the default channel."""
    for candidate in slack.routes:
        if candidate.severity and severity not in candidate.severity:
            continue
        if candidate.services and labels.get("service") not in candidate.services:
            continue
        return candidate.channel
    return slack.channel


class SlackNotifier:
    """The Slack `Notifier`: a root message per incident that always shows its current state
    (posted, then edited with ``chat.update``) and a thread of replies for the rest, rendered
    by `blocks`; routed and paced by the config's `slack` section."""

    name = "slack"

    def __init__(self, client: SlackClient, slack: SlackConfig) -> None:
        self._client = client
        self._slack = slack

    def __repr__(self) -> str:
        return f"SlackNotifier({self._client!r})"

    @property
    def max_per_second(self) -> float:
        return self._slack.max_per_second

    def destination(self, *, severity: str, labels: Mapping[str, str]) -> str:
        return route(self._slack, severity=severity, labels=labels)

    def notify(self, notification: Notification) -> Root | None:
        """Make the Slack calls for the row; the new root message when one was posted.

        With no root yet (the first row, or the root could not be posted), any row posts a
        fresh root showing the incident as it is now. `quiet` (a silence): no paging reply.
        """
        incident, root, kind = notification.incident, notification.root, notification.event.kind
        if root is None or updates_root(kind):
            runbook = blocks.runbook_command(notification.opening_data, incident.labels)
            message = blocks.root_message(
                incident, runbook=runbook, dashboard_url=notification.dashboard_url
            )
            if root is None:
                posted = self._client.post(notification.destination, message.text, message.blocks)
                return Root(posted.channel, posted.ts)
            # A retry after the reply failed edits again: the same content, so harmless.
            self._client.update(root.destination, root.ref, message.text, message.blocks)
            if not pages(kind) or notification.quiet:
                return None
        reply = blocks.thread_reply(incident, notification.event)
        self._client.post(
            root.destination,
            reply.text,
            reply.blocks,
            thread_ts=root.ref,
            broadcast=pages(kind),
        )
        return None


def classify_response(
    response: SlackResponse, *, redact: Callable[[str], str] = str
) -> NotifyError:
    """The error a non-successful Slack answer stands for; ``redact`` scrubs echoed text."""
    status = response.status_code
    if status == 429:
        return RateLimited(retry_after_s(response.headers))
    if status >= 500:
        return Transient(f"HTTP {status}")
    data = response.data if isinstance(response.data, dict) else {}
    code = redact(str(data.get("error") or f"HTTP {status}"))
    return classify_code(code, response.headers)


def classify_code(code: str, headers: dict[str, Any] | None = None) -> NotifyError:
    """Slack's ``error`` code to an error type; codes we do not know are Permanent.

    An unknown code retried forever would block the channel's queue, while a failed row is
    logged and visible, so the unknown fails fast.
    """
    if code in RATE_LIMIT_CODES:
        return RateLimited(retry_after_s(headers or {}))
    if code in TRANSIENT_CODES:
        return Transient(code)
    return Permanent(code[:200])


def retry_after_s(headers: dict[str, Any]) -> float:
    """Seconds from a ``Retry-After`` header (any case); a missing or odd value gives 1 s."""
    for name, value in headers.items():
        if name.lower() != "retry-after":
            continue
        raw = value[0] if isinstance(value, list) and value else value
        try:
            seconds = float(raw)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        return seconds if seconds >= 0 else DEFAULT_RETRY_AFTER_S
    return DEFAULT_RETRY_AFTER_S


def _network_reason(exc: BaseException) -> str:
    """A short reason for a network failure: urllib wraps the useful part in ``reason``."""
    inner = getattr(exc, "reason", None)
    detail = inner if isinstance(inner, BaseException) else exc
    if isinstance(detail, TimeoutError):
        return "timed out"
    text = str(detail) or type(detail).__name__
    return f"network: {text}"
