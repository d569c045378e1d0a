"""Slack, the first notifier: `SlackClient` is the one seam to Slack's Web API (post, update,
check), `SlackNotifier` the `Notifier` (notify/base.py) that the dispatcher sends through.

Every failure leaves as one of the notifier errors, so the outbox dispatcher decides with a
single ``except`` what happens to the row:

* ``RateLimited(retry_after)``: HTTP 429 or ``ratelimited``; wait ``retry_after`` seconds.
* ``Transient(reason)``: the network, a timeout, HTTP 5xx, or Slack's ``internal_error``,
  ``fatal_error``, ``service_unavailable``, ``request_timeout``; retry with backoff.
* ``Blocked(reason)``: the token is refused (``invalid_auth``, ``token_revoked``...), or the
  channel is (``channel_not_found``, ``not_in_channel``, ``is_archived``...): nothing goes
  out there until someone fixes it, so the rows wait under a critical condition.
* ``Permanent(reason)``: everything else (invalid blocks, a message too long, a code we do
  not know); retrying cannot help, so the row is marked failed and logged.

Each message posted for an outbox row carries Slack message metadata (event type
``reliability_page``, payload ``outbox_row`` and ``incident_id``). A row claimed again after
its dispatcher died mid-send is first looked for (``conversations.history`` of its channel,
or ``conversations.replies`` of its incident's thread, ``include_all_metadata``): found, it
is recorded, not posted twice. That needs the ``channels:history`` scope (``groups:history``
for private channels), and for a channel configured by name ``channels:read``
(``groups:read``) to find its ID with ``conversations.list``; without them the row is posted
again.

An incident's root message that is gone (deleted, its channel archived or deleted, no longer
editable) is posted again where a new incident would go, saying the earlier one was lost, and
the thread carries on under the new one.

slack_sdk's own retry handlers are switched off: a hidden retry inside a call would break
the outbox's per-channel pacing and its honouring of ``Retry-After``. Its ERROR line for
every failed request is dropped too (kept at DEBUG): the same failure reaches the
dispatcher, which logs one line when Slack goes down and one when it is back. The token is
never part of an error message; ``reason`` is a Slack error code or a network error's text.
"""

from __future__ import annotations

import http.client
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse

from reliability.config import SlackConfig
from reliability.notify import blocks
from reliability.notify.base import (
    Blocked,
    Delivered,
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
# The token itself is refused: nothing this notifier sends can go out.
TOKEN_CODES = frozenset(
    {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired"}
    | {"no_permission", "missing_scope", "not_allowed_token_type", "team_access_not_granted"}
    | {"ekm_access_denied", "org_login_required"}
)
# One channel refuses: what is routed there waits until it is fixed (or the route is).
CHANNEL_CODES = frozenset(
    {"channel_not_found", "not_in_channel", "is_archived", "restricted_action"}
    | {"restricted_action_read_only_channel", "restricted_action_thread_only_channel"}
)
# A root message that can no longer be edited or replied under: post a new root.
ROOT_GONE_CODES = frozenset(
    {"message_not_found", "cant_update_message", "edit_window_closed"}
    | {"channel_not_found", "is_archived"}
)
REDACTED = "xox?-<redacted>"
TEST_MESSAGE = (
    ":white_check_mark: Test from `reliability notify test`: incidents routed to this "
    "channel reach it."
)
# What slack_sdk logs at ERROR for a request that failed: the caller gets the same failure
# as an exception, and the dispatcher logs one line per outage instead of one per call.
SDK_DUPLICATES = ("Failed to send a request to Slack API server", "Failed to decode Slack API")
# The metadata event type of the messages posted for outbox rows.
PAGE_EVENT = "reliability_page"
# How far a row's lookup reads: pages of messages, newest first, back to the row's writing
# less a margin for the clocks of this host and Slack's.
LOOKUP_PAGE = 200
LOOKUP_PAGES = 5
CLOCK_MARGIN = timedelta(minutes=1)
# A public (C) or private (G) channel's ID, as conversations.history takes it.
CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{8,}")


class _RaisedAnyway(logging.Filter):
    """Drops slack_sdk's line per failed request unless DEBUG is on (then kept, as DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(SDK_DUPLICATES):
            return True
        if not SDK_LOG.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


# slack_sdk logs through this logger (passed to its WebClient), not its own module's.
SDK_LOG = logging.getLogger("reliability.notify.slack_sdk")
SDK_LOG.addFilter(_RaisedAnyway())

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
            logger=SDK_LOG,
        )

    def __repr__(self) -> str:
        return f"SlackClient(base_url={self.base_url!r})"

    def check(self) -> SlackIdentity:
        """Verify the token with ``auth.test``; Blocked if Slack rejects it."""
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
        metadata: dict[str, Any] | None = None,
    ) -> Posted:
        """Post a message, or a reply in the thread of ``thread_ts``; with ``broadcast`` the
        reply is also shown in the channel, where a mention in it reaches everyone;
        ``metadata``: Slack message metadata (``event_type``, ``event_payload``).

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
            metadata=metadata,
        )
        return Posted(channel=str(data["channel"]), ts=str(data["ts"]))

    def channel_id(self, name: str) -> str | None:
        """The ID of the channel called ``name`` (``#name``), from ``conversations.list``;
        None if no unarchived channel has it. Raises Transient past ``LOOKUP_PAGES`` pages."""
        wanted = name.removeprefix("#")
        arguments: dict[str, Any] = {
            "types": "public_channel,private_channel",
            "exclude_archived": True,
            "limit": LOOKUP_PAGE,
        }
        for _ in range(LOOKUP_PAGES):
            data = self._call("conversations_list", **arguments)
            for channel in data.get("channels") or []:
                if channel.get("name") == wanted:
                    return str(channel["id"])
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            arguments["cursor"] = cursor
        raise Transient(f"more than {LOOKUP_PAGES * LOOKUP_PAGE} channels to read")

    def find(
        self,
        channel: str,
        *,
        event_type: str,
        match: Mapping[str, Any],
        oldest: datetime,
        thread_ts: str | None = None,
    ) -> Posted | None:
        """The newest message since ``oldest`` in ``channel`` (an ID), or in the thread of
        ``thread_ts``, whose metadata has this event type and a payload holding ``match``;
        None when none. Reads at most ``LOOKUP_PAGES`` pages; raises Transient past them
        (the channel too busy to tell), and as any call does."""
        arguments: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{oldest.timestamp():.6f}",
            "include_all_metadata": True,
            "limit": LOOKUP_PAGE,
        }
        method = "conversations_history"
        if thread_ts is not None:
            method, arguments["ts"] = "conversations_replies", thread_ts
        for _ in range(LOOKUP_PAGES):
            data = self._call(method, **arguments)
            for message in data.get("messages") or []:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == event_type and all(
                    payload.get(key) == value for key, value in match.items()
                ):
                    return Posted(channel=channel, ts=str(message["ts"]))
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not data.get("has_more") or not cursor:
                return None
            arguments["cursor"] = cursor
        raise Transient(f"more than {LOOKUP_PAGES * LOOKUP_PAGE} messages to read")

    def update(self, channel: str, ts: str, text: str, blocks: Blocks | None = None) -> None:
        """Replace the text (and blocks, when given) of message ``ts``; ``channel`` is an ID."""
        self._call("chat_update", channel=channel, ts=ts, text=text, blocks=blocks)

    def post_ephemeral(self, channel: str, user: str, text: str) -> None:
        """A message in ``channel`` that only ``user`` sees (a refusal, a confirmation)."""
        self._call("chat_postEphemeral", channel=channel, user=user, text=text)

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """Open a modal for the click that gave ``trigger_id`` (valid for 3 s at Slack)."""
        self._call("views_open", trigger_id=trigger_id, view=view)

    def user_name(self, user: str) -> str:
        """A user's display name (else real name, else handle) from ``users.info``."""
        found = self._call("users_info", user=user)["user"]
        profile = found.get("profile") or {}
        return str(
            profile.get("display_name") or profile.get("real_name") or found.get("name") or user
        )

    def group_members(self, group: str) -> list[str]:
        """The user ids of a user group (``usergroups.users.list``)."""
        return [str(u) for u in self._call("usergroups_users_list", usergroup=group)["users"]]

    def _call(self, method: str, **arguments: Any) -> SlackResponse:
        """Call one WebClient method; every failure becomes a NotifyError without the token."""
        try:
            return getattr(self._client, method)(**arguments)
        except SlackApiError as exc:
            error = classify_response(exc.response, redact=self._redact)
            if isinstance(error, Blocked) and error.reason in CHANNEL_CODES:
                error.destination = arguments.get("channel")
            # `from None`: the response object carries the request's headers, token included.
            raise error from None
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
        # The IDs Slack answered for channels routed by name: history is read by ID only.
        self._channel_ids: dict[str, str] = {}

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
        fresh root showing the incident as it is now. A root that is gone is posted again
        where the incident would go now, saying so, and the row goes on under the new one.
        `quiet` (a silence): no paging reply, and no new root either.
        """
        root = notification.root
        if root is None:
            return self._post_root(notification, notification.destination)
        try:
            self._send(notification, root)
            return None
        except Permanent as exc:
            if exc.reason not in ROOT_GONE_CODES:
                raise
            lost = exc.reason
        if notification.quiet:
            return None  # a new root would ping; the silence's end brings the incident back
        incident, kind = notification.incident, notification.event.kind
        where = self.destination(severity=incident.severity.value, labels=incident.labels)
        new_root = self._post_root(notification, where, lost=lost)
        if updates_root(kind) and not pages(kind):
            return new_root  # the new root shows it
        try:
            self._reply(notification, new_root)
        except NotifyError as exc:
            exc.root = new_root  # remembered, so that the retry only replies
            raise
        return new_root

    def _post_root(
        self, notification: Notification, destination: str, *, lost: str | None = None
    ) -> Root:
        incident = notification.incident
        runbook = blocks.runbook_command(notification.opening_data, incident.labels)
        message = blocks.root_message(
            incident,
            runbook=runbook,
            dashboard_url=notification.dashboard_url,
            lost=lost,
            buttons=self._slack.interactive,
        )
        posted = self._client.post(
            destination, message.text, message.blocks, metadata=_metadata(notification)
        )
        self._channel_ids[destination] = posted.channel
        return Root(posted.channel, posted.ts)

    def _send(self, notification: Notification, root: Root) -> None:
        """Edit the root (root-changing events), reply under it (the rest, and pages)."""
        incident, kind = notification.incident, notification.event.kind
        if updates_root(kind):
            runbook = blocks.runbook_command(notification.opening_data, incident.labels)
            message = blocks.root_message(
                incident,
                runbook=runbook,
                dashboard_url=notification.dashboard_url,
                buttons=self._slack.interactive,
            )
            # A retry after the reply failed edits again: the same content, so harmless.
            self._client.update(root.destination, root.ref, message.text, message.blocks)
            if not pages(kind) or notification.quiet:
                return
        self._reply(notification, root)

    def _reply(self, notification: Notification, root: Root) -> None:
        kind = notification.event.kind
        reply = blocks.thread_reply(notification.incident, notification.event)
        self._client.post(
            root.destination,
            reply.text,
            reply.blocks,
            thread_ts=root.ref,
            broadcast=pages(kind),
            metadata=_metadata(notification),
        )

    def delivered(self, notification: Notification, *, since: datetime) -> Delivered | None:
        """The root message, or the thread reply, that an earlier claim of the row posted,
        found by its metadata; None when there is none, or the row only edits the root."""
        row = notification.outbox_row
        if row is None:
            return None
        match = {"outbox_row": row}
        oldest = since - CLOCK_MARGIN
        root = notification.root
        if root is None:
            channel = self._id_of(notification.destination)
            if channel is None:
                return None  # no such channel: nothing was posted there
            posted = self._client.find(channel, event_type=PAGE_EVENT, match=match, oldest=oldest)
            return None if posted is None else Delivered(Root(posted.channel, posted.ts))
        kind = notification.event.kind
        if updates_root(kind) and (not pages(kind) or notification.quiet):
            return None  # an edit, the same content again: harmless
        posted = self._client.find(
            root.destination, event_type=PAGE_EVENT, match=match, oldest=oldest, thread_ts=root.ref
        )
        return None if posted is None else Delivered(None)

    def _id_of(self, destination: str) -> str | None:
        """The ID of a destination given by ID or name (history is read by ID only)."""
        if CHANNEL_ID.fullmatch(destination):
            return destination
        if destination not in self._channel_ids:
            found = self._client.channel_id(destination)
            if found is None:
                return None
            self._channel_ids[destination] = found
        return self._channel_ids[destination]

    def check(self) -> str:
        identity = self._client.check()
        return f"{identity.user} on {identity.team}"

    def destinations(self) -> list[str]:
        channels = [self._slack.channel, *(r.channel for r in self._slack.routes)]
        return list(dict.fromkeys(channels))

    def send_test(self, destination: str) -> Root:
        posted = self._client.post(destination, TEST_MESSAGE)
        return Root(posted.channel, posted.ts)


def _metadata(notification: Notification) -> dict[str, Any] | None:
    """The metadata that lets a later claim of the row find what it posted."""
    if notification.outbox_row is None:
        return None
    payload = {"outbox_row": notification.outbox_row, "incident_id": notification.incident.id}
    return {"event_type": PAGE_EVENT, "event_payload": payload}


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
    if code in TOKEN_CODES or code in CHANNEL_CODES:
        return Blocked(code)
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
