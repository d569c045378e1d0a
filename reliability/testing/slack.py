"""Slack Web API stand-in: ``auth.test``, ``chat.*``, ``users.info``, ``views.open`` at the wire.

Driven by the real client, the way production drives Slack::

    with SlackStandIn() as slack:
        client = WebClient(token=slack.token, base_url=slack.api_url)
        ts = client.chat_postMessage(channel="#alerts", text="gpu-3 is hot")["ts"]
        slack.rate_limit(2, retry_after=3)  # the next two calls: HTTP 429, Retry-After: 3
        slack.outage()                      # connections refused until outage(False)
        assert [m.text for m in slack.messages("alerts")] == ["gpu-3 is hot"]

``conversations.history`` and ``conversations.replies`` read a channel (by ID) and a thread,
``conversations.list`` lists the channels, with Slack's arguments and cursor pagination;
message ``metadata`` given to ``chat.postMessage`` comes back only with
``include_all_metadata``; ``revoke_scope("channels:history")`` (``"channels:read"`` for the
list) makes them answer ``missing_scope``.

It answers like Slack: HTTP 200 with ``{"ok": false, "error": ...}`` for API errors
(``not_authed``, ``invalid_auth``, ``account_inactive``, ``channel_not_found``,
``is_archived``, ``message_not_found``, ``no_text``, ``msg_too_long``, ``invalid_blocks``,
``invalid_blocks_format``, ``invalid_thread_ts``), HTTP 429 with ``Retry-After`` when rate
limited. What people do to a workspace can be done to it: ``delete(ts)`` removes a message
(as a user deleting the alert would; later ``chat.update`` calls answer
``message_not_found``), ``archive("alerts")`` archives a channel (posts and edits there
answer ``is_archived``), ``deactivate()`` turns the bot's account off (every call, including
``auth.test``, answers ``account_inactive`` until ``deactivate(False)``).

Bodies may be JSON (what ``slack_sdk`` sends for ``chat.*``) or form-encoded (``blocks``
then a JSON string); the token comes from ``Authorization: Bearer`` or, for form bodies
only, a ``token`` field, as at Slack.

``chat.postMessage`` takes a channel ID, name or ``#name``; ``chat.update`` only an ID, as
Slack does, so a sender that stored the name instead of the ID from the answer fails here too.
A reply to a well-formed but unknown ``thread_ts`` is accepted (Slack accepts it and the reply
is never seen); ``orphans()`` lists them so a test can catch it.

Every call that reaches the server is recorded (``calls()``), including refused ones; calls
made while ``outage()`` refuses connections never arrive, as with the real outage.

Incoming webhooks too (what Alertmanager's ``slack_configs`` post to, its ``api_url``):
``slack.webhook_url("alerts")`` is a secret URL posting to that channel; a JSON (or form
``payload=``) body with ``text``, ``blocks`` or ``attachments`` is answered ``ok`` as
``text/plain``, 200; errors as Slack's, in plain text: 400 ``invalid_payload`` or
``no_text``, 404 ``no_service`` (an unknown webhook), 410 ``channel_is_archived``. The
message is in ``messages()`` with its ``attachments``; the call is recorded as method
``incoming-webhook``.

Interactivity: ``add_user(id, name, groups)`` makes workspace members (``users.info``,
``usergroups.users.list``); ``click(url, ts, action_id, user)`` presses a button the message
shows, posting the ``block_actions`` payload to the app's interactivity URL signed with v0
as Slack does (``timestamp=`` an old one replays, ``secret=`` a wrong one forges);
``redeliver(delivery)`` sends the same request again; ``views.open`` takes a click's trigger
id once, within 3 s, and ``submit(url, view_id, user)`` submits the modal;
``chat.postEphemeral`` answers land in ``ephemerals()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from reliability.testing.inference import listen, uvicorn_config

DEFAULT_TOKEN = "xoxb-0000000000-0000000000000-standinstandinstandin00"
DEFAULT_CHANNELS = ("alerts", "oncall")
TEAM = {
    "team": "Reliability Stand-in",
    "team_id": "T0000STAND",
    "url": "https://standin.slack.com/",
}
BOT = {"user": "reliability", "user_id": "U0000STAND", "bot_id": "B0000STAND"}
APP_ID = "A0000STAND"
MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50
BLOCK_TEXT_LIMITS = {"section": 3000, "header": 150}
BLOCK_TYPES = frozenset(
    {"actions", "context", "divider", "file", "header", "image", "input", "markdown"}
    | {"rich_text", "section", "video"}
)
TS_PATTERN = re.compile(r"\d{10}\.\d{6}")
START_TIMEOUT_S = 10.0
# Slack's trigger ids open a view within 3 s of the click, once.
TRIGGER_TTL_S = 3.0
DEFAULT_SIGNING_SECRET = "standin-signing-secret-0000000000"
DEFAULT_APP_TOKEN = "xapp-1-A0000STAND-0000000000000-standinstandinstandin00"
SOCKET_PATH = "/socket"
CLICK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SlackCall:
    """One request the server received, and how it answered it.

    ``ts`` is the message's ts: assigned by a successful ``chat.postMessage``, or the one
    ``chat.update`` named. ``channel`` is as the caller sent it (an ID or a name).
    """

    method: str
    status: int
    error: str | None
    channel: str | None
    ts: str | None
    thread_ts: str | None
    text: str | None
    blocks: list[dict[str, Any]] | None
    received_at: float
    # A thread reply also shown in the channel ("Also send to #channel").
    reply_broadcast: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass(frozen=True)
class PostedMessage:
    """A message as a reader of the channel sees it now; ``edits`` counts chat.update calls."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    edits: int = 0
    history: tuple[str, ...] = field(default=())  # earlier texts, oldest first
    attachments: list[dict[str, Any]] = field(default_factory=list)  # incoming webhooks'
    # Slack's message metadata (``event_type``, ``event_payload``), as posted.
    metadata: dict[str, Any] | None = None
    broadcast: bool = False  # a reply also shown in the channel

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts


@dataclass(frozen=True)
class Ephemeral:
    """A message only ``user`` saw (``chat.postEphemeral``)."""

    channel: str
    user: str
    text: str


@dataclass(frozen=True)
class OpenView:
    """A modal opened with ``views.open`` for ``user``'s click."""

    id: str
    user: str
    view: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """One interaction request as sent (so it can be sent again) and the app's answer."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int
    answer: str = ""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Slack's v0 request signature."""
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def _now_ts() -> str:
    return f"{time.time():.6f}"


class ApiError(Exception):
    """An answer of HTTP 200 with ``{"ok": false, "error": code}``, as Slack sends."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] | str
    headers: Mapping[str, str] = field(default_factory=dict)


class SlackState:
    """Channels, messages, the call log and the failure controls; safe from any thread."""

    def __init__(self, token: str, channels: Iterable[str]) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._channels = {name: f"C{index:09d}" for index, name in enumerate(channels, 1)}
        self._messages: dict[str, PostedMessage] = {}
        self._calls: list[SlackCall] = []
        self._last_us = 0
        self._rate_limited = 0
        self._retry_after = 1
        self._failures: list[str] = []
        self._failing_method: str | None = None
        self._archived: set[str] = set()
        self._inactive = False
        self._webhooks: dict[str, str] = {}  # secret path -> channel ID
        self.outage_status: int | None = None
        self.app_token = DEFAULT_APP_TOKEN
        self.socket_url: str | None = None
        self.sockets = SocketHub()
        self._users: dict[str, str] = {}
        self._groups: dict[str, set[str]] = {}
        self._ephemerals: list[Ephemeral] = []
        self._views: list[OpenView] = []
        # Each click's trigger id: when it was issued, and by whom (views.open takes it once).
        self._triggers: dict[str, tuple[float, str]] = {}
        self._revoked_scopes: set[str] = set()

    # -- controls -------------------------------------------------------------------------

    def rate_limit(self, calls: int, retry_after: int) -> None:
        with self._lock:
            self._rate_limited, self._retry_after = calls, retry_after

    def fail_next(self, calls: int, error: str, method: str | None = None) -> None:
        with self._lock:
            self._failures, self._failing_method = [error] * calls, method

    def revoke_scope(self, scope: str, revoked: bool = True) -> None:
        """Take an OAuth scope from the bot's token (or give it back)."""
        with self._lock:
            (self._revoked_scopes.add if revoked else self._revoked_scopes.discard)(scope)

    def channel_id(self, channel: str) -> str:
        """The ID of a channel given by name, ``#name`` or ID; KeyError if there is none."""
        with self._lock:
            found = self._lookup(channel, names=True)
        if found is None:
            raise KeyError(channel)
        return found

    def add_channel(self, name: str) -> str:
        """Create a channel (if new) and return its ID."""
        with self._lock:
            return self._channels.setdefault(name, f"C{len(self._channels) + 1:09d}")

    def delete(self, ts: str) -> None:
        """Delete the message `ts` (KeyError if none); its replies stay, orphaned."""
        with self._lock:
            del self._messages[ts]

    def archive(self, channel: str, archived: bool = True) -> None:
        """Archive (or unarchive) a channel given by name or ID; KeyError if none."""
        with self._lock:
            found = self._lookup(channel, names=True)
            if found is None:
                raise KeyError(channel)
            (self._archived.add if archived else self._archived.discard)(found)

    def deactivate(self, inactive: bool = True) -> None:
        with self._lock:
            self._inactive = inactive

    def add_user(self, user: str, name: str, groups: Iterable[str] = ()) -> None:
        with self._lock:
            self._users[user] = name
            for group in groups:
                self._groups.setdefault(group, set()).add(user)

    def user_name(self, user: str) -> str:
        with self._lock:
            return self._users[user]

    def trigger(self, user: str) -> str:
        """A new trigger id, as Slack issues one with each click."""
        with self._lock:
            trigger_id = f"{len(self._triggers) + 1}.{time.time_ns()}.standin"
            self._triggers[trigger_id] = (time.monotonic(), user)
            return trigger_id

    def ephemerals(self) -> list[Ephemeral]:
        with self._lock:
            return list(self._ephemerals)

    def views(self) -> list[OpenView]:
        with self._lock:
            return list(self._views)

    def reset(self) -> None:
        """Forget messages and calls, lift every failure; channels and token stay."""
        with self._lock:
            self._messages.clear()
            self._calls.clear()
            self._rate_limited, self._failures, self.outage_status = 0, [], None
            self._archived.clear()
            self._inactive = False
            self._ephemerals.clear()
            self._views.clear()
            self._triggers.clear()
            self._revoked_scopes.clear()

    def webhook_path(self, channel: str) -> str:
        """The path of the incoming webhook that posts to `channel` (made if new)."""
        with self._lock:
            found = self._lookup(channel, names=True)
            if found is None:
                raise KeyError(channel)
            for path, target in self._webhooks.items():
                if target == found:
                    return path
            bot = f"B{len(self._webhooks) + 1:09d}"
            path = f"/services/{TEAM['team_id']}/{bot}/{secrets.token_hex(12)}"
            self._webhooks[path] = found
            return path

    def answer_webhook(self, path: str, payload: Any) -> Answer:
        """Answer one POST to an incoming webhook (`payload` None: unparsable), and record it."""
        received_at = time.time()
        with self._lock:
            answer, message = self._webhook_locked(path, payload)
            params = payload if isinstance(payload, dict) else {}
            channel = message.channel if message else self._webhooks.get(path)
            ts = message.ts if message else None
            self._record("incoming-webhook", params | {"channel": channel}, answer, ts, received_at)
        return answer

    def _webhook_locked(self, path: str, payload: Any) -> tuple[Answer, PostedMessage | None]:
        if self.outage_status is not None:
            return Answer(self.outage_status, "Service Unavailable"), None
        channel = self._webhooks.get(path)
        if channel is None:
            return Answer(404, "no_service"), None
        if not isinstance(payload, dict):
            return Answer(400, "invalid_payload"), None
        if channel in self._archived:
            return Answer(410, "channel_is_archived"), None
        attachments = payload.get("attachments") or []
        try:
            text, blocks = message_content(payload)
        except ApiError as exc:
            return Answer(400, exc.code), None
        if not isinstance(attachments, list):
            return Answer(400, "invalid_attachments"), None
        if text is None and blocks is None and not attachments:
            return Answer(400, "no_text"), None
        message = PostedMessage(
            channel, self._next_ts(), text or "", blocks or [], attachments=attachments
        )
        self._messages[message.ts] = message
        return Answer(200, "ok"), message

    # -- what tests read ------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[SlackCall]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def all_messages(self) -> list[PostedMessage]:
        with self._lock:
            return sorted(self._messages.values(), key=lambda m: m.ts)

    # -- the API --------------------------------------------------------------------------

    def answer(self, method: str, token: str | None, params: Mapping[str, Any]) -> Answer:
        """Answer one API call as Slack would, and record it."""
        received_at = time.time()
        with self._lock:
            answer, ts = self._answer_locked(method, token, params)
            self._record(method, params, answer, ts, received_at)
        return answer

    def _answer_locked(
        self, method: str, token: str | None, params: Mapping[str, Any]
    ) -> tuple[Answer, str | None]:
        if self.outage_status is not None:
            return Answer(self.outage_status, "Service Unavailable"), None
        if self._rate_limited > 0:
            self._rate_limited -= 1
            headers = {"Retry-After": str(self._retry_after)}
            return Answer(429, {"ok": False, "error": "ratelimited"}, headers), None
        try:
            if method == "apps.connections.open":
                self._injected_failure(method)
                return self._connections_open(token), None
            self._check_token(token)
            self._injected_failure(method)
            body = self._dispatch(method, params)
        except ApiError as exc:
            return Answer(200, {"ok": False, "error": exc.code}), None
        return Answer(200, body), body.get("ts")

    def _injected_failure(self, method: str) -> None:
        if self._failures and self._failing_method in (None, method):
            raise ApiError(self._failures.pop(0))

    def _check_token(self, token: str | None) -> None:
        if not token:
            raise ApiError("not_authed")
        if token != self.token:
            raise ApiError("invalid_auth")
        if self._inactive:
            raise ApiError("account_inactive")

    def _dispatch(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, **TEAM, **BOT, "is_enterprise_install": False}
        if method == "chat.postMessage":
            return self._post(params)
        if method == "chat.update":
            return self._update(params)
        if method == "chat.postEphemeral":
            return self._post_ephemeral(params)
        if method == "users.info":
            return self._user_info(params)
        if method == "usergroups.users.list":
            return self._group_users(params)
        if method == "views.open":
            return self._open_view(params)
        if method == "conversations.history":
            return self._history(params)
        if method == "conversations.replies":
            return self._replies(params)
        if method == "conversations.list":
            return self._list(params)
        raise ApiError("unknown_method")

    def _connections_open(self, token: str | None) -> Answer:
        """Socket Mode's WebSocket URL, for the app-level token only (a bot token is refused
        with ``not_allowed_token_type``, as at Slack)."""
        if not token:
            raise ApiError("not_authed")
        if token != self.app_token:
            raise ApiError("not_allowed_token_type" if token == self.token else "invalid_auth")
        if self.socket_url is None:
            raise ApiError("internal_error")
        ticket = self.sockets.ticket()
        return Answer(200, {"ok": True, "url": f"{self.socket_url}?ticket={ticket}"})

    def _post_ephemeral(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._lookup(params.get("channel"), names=True)
        if channel is None:
            raise ApiError("channel_not_found")
        user = params.get("user")
        if user not in self._users:
            raise ApiError("user_not_found")
        text, blocks = message_content(params)
        if text is None and blocks is None:
            raise ApiError("no_text")
        self._ephemerals.append(Ephemeral(channel, str(user), text or ""))
        return {"ok": True, "message_ts": self._next_ts()}

    def _user_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        user = params.get("user")
        if user not in self._users:
            raise ApiError("user_not_found")
        name = self._users[user]
        profile = {"display_name": name, "real_name": name.capitalize()}
        return {"ok": True, "user": {"id": user, "name": name, "profile": profile}}

    def _group_users(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = params.get("usergroup")
        if group not in self._groups:
            raise ApiError("no_such_subteam")
        return {"ok": True, "users": sorted(self._groups[group])}

    def _open_view(self, params: Mapping[str, Any]) -> dict[str, Any]:
        trigger = self._triggers.pop(str(params.get("trigger_id")), None)
        if trigger is None:
            raise ApiError("invalid_trigger_id")
        if time.monotonic() - trigger[0] > TRIGGER_TTL_S:
            raise ApiError("expired_trigger_id")
        view = params.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                raise ApiError("invalid_arguments") from None
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise ApiError("invalid_arguments")
        if not all(_valid_block(block) for block in view.get("blocks", [])):
            raise ApiError("invalid_blocks")
        opened = OpenView(f"V{len(self._views) + 1:09d}", trigger[1], view)
        self._views.append(opened)
        return {"ok": True, "view": {"id": opened.id, **view}}

    def _post(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._lookup(params.get("channel"), names=True)
        if channel is None:
            raise ApiError("channel_not_found")
        if channel in self._archived:
            raise ApiError("is_archived")
        text, blocks = message_content(params)
        if text is None and blocks is None:
            raise ApiError("no_text")
        thread_ts = params.get("thread_ts")
        if thread_ts is not None and not _is_ts(thread_ts):
            raise ApiError("invalid_thread_ts")
        message = PostedMessage(
            channel,
            self._next_ts(),
            text or "",
            blocks or [],
            thread_ts or None,
            metadata=_metadata(params.get("metadata")),
            broadcast=bool(thread_ts) and _flag(params.get("reply_broadcast")),
        )
        self._messages[message.ts] = message
        return {"ok": True, "channel": channel, "ts": message.ts, "message": _wire(message)}

    def _update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._lookup(params.get("channel"), names=False)
        if channel is None:
            raise ApiError("channel_not_found")
        if channel in self._archived:
            raise ApiError("is_archived")
        current = self._messages.get(str(params.get("ts", "")))
        if current is None or current.channel != channel:
            raise ApiError("message_not_found")
        text, blocks = message_content(params)
        if text is None and blocks is None:
            raise ApiError("no_text")
        # As at Slack: a field left out keeps its old value; blocks=[] removes the blocks.
        updated = replace(
            current,
            text=current.text if text is None else text,
            blocks=current.blocks if blocks is None else blocks,
            edits=current.edits + 1,
            history=(*current.history, current.text),
        )
        self._messages[updated.ts] = updated
        body = {"ok": True, "channel": channel, "ts": updated.ts, "text": updated.text}
        return {**body, "message": _wire(updated)}

    def _history(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``conversations.history``: the channel's messages newest first (replies only when
        also sent to the channel), between ``oldest`` and ``latest`` (exclusive unless
        ``inclusive``), ``limit`` a page (default 100, at most 999), ``cursor`` the next."""
        channel = self._readable(params)
        inclusive = _flag(params.get("inclusive"))
        oldest, latest = _ts_bound(params.get("oldest"), "0"), _ts_bound(params.get("latest"))
        found = [
            m
            for m in sorted(self._messages.values(), key=lambda m: m.ts, reverse=True)
            if m.channel == channel
            and (not m.is_reply or m.broadcast)
            and (float(m.ts) > oldest or (inclusive and float(m.ts) == oldest))
            and (latest is None or float(m.ts) < latest or (inclusive and float(m.ts) == latest))
        ]
        return self._page("messages", found, params)

    def _replies(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``conversations.replies``: the parent ``ts`` first, then its replies oldest first."""
        channel = self._readable(params)
        ts = params.get("ts")
        if not _is_ts(ts):
            raise ApiError("invalid_ts") if ts else ApiError("invalid_arguments")
        parent = self._messages.get(str(ts))
        if parent is None or parent.channel != channel:
            raise ApiError("thread_not_found")
        thread = [
            m
            for m in sorted(self._messages.values(), key=lambda m: m.ts)
            if m.channel == channel and m.is_reply and m.thread_ts == parent.ts
        ]
        return self._page("messages", [parent, *thread], params)

    def _list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``conversations.list``: the workspace's public channels (the only kind here)."""
        if "channels:read" in self._revoked_scopes:
            raise ApiError("missing_scope")
        skip = self._archived if _flag(params.get("exclude_archived")) else set()
        channels = [
            {"id": id_, "name": name, "is_channel": True, "is_private": False}
            | {"is_archived": id_ in self._archived}
            for name, id_ in self._channels.items()
            if id_ not in skip
        ]
        return self._page("channels", channels, params)

    def _readable(self, params: Mapping[str, Any]) -> str:
        """The channel ID a history call reads (an ID only, as at Slack); the scope checked."""
        if "channels:history" in self._revoked_scopes:
            raise ApiError("missing_scope")
        channel = self._lookup(params.get("channel"), names=False)
        if channel is None:
            raise ApiError("channel_not_found")
        return channel

    def _page(self, key: str, items: list[Any], params: Mapping[str, Any]) -> dict[str, Any]:
        """One page of ``items`` (messages or channels) under ``key``, cursor-paginated."""
        try:
            limit = min(int(params.get("limit") or 100), 999)
            start = int(params.get("cursor") or 0)
        except ValueError:
            raise ApiError("invalid_cursor") from None
        if limit < 1 or start < 0:
            raise ApiError("invalid_limit" if limit < 1 else "invalid_cursor")
        page = items[start : start + limit]
        more = start + limit < len(items)
        metadata = _flag(params.get("include_all_metadata"))
        return {
            "ok": True,
            key: [_wire(m, metadata=metadata) if isinstance(m, PostedMessage) else m for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _lookup(self, channel: Any, *, names: bool) -> str | None:
        if not isinstance(channel, str):
            return None
        if channel in self._channels.values():
            return channel
        return self._channels.get(channel.removeprefix("#")) if names else None

    def _next_ts(self) -> str:
        """Slack's "seconds.micros" form, strictly increasing even within one microsecond."""
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _record(
        self,
        method: str,
        params: Mapping[str, Any],
        answer: Answer,
        ts: str | None,
        received_at: float,
    ) -> None:
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        blocks = params.get("blocks")
        call = SlackCall(
            method=method,
            status=answer.status,
            error=error,
            channel=_str_or_none(params.get("channel")),
            ts=ts or _str_or_none(params.get("ts")),
            thread_ts=_str_or_none(params.get("thread_ts")),
            text=_str_or_none(params.get("text")),
            blocks=_parsed_blocks(blocks),
            received_at=received_at,
            # JSON bodies carry a boolean, form-encoded ones the string "true".
            reply_broadcast=params.get("reply_broadcast") in (True, "true", "1"),
        )
        self._calls.append(call)


def message_content(params: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The text and blocks of a call, validated as Slack does (ApiError if not)."""
    text = params.get("text")
    if text is not None and not isinstance(text, str):
        text = str(text)
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise ApiError("msg_too_long")
    raw = params.get("blocks")
    if raw is None:
        return text or None, None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ApiError("invalid_blocks_format") from None
    if not isinstance(raw, list):
        raise ApiError("invalid_blocks_format")
    if len(raw) > MAX_BLOCKS or not all(_valid_block(block) for block in raw):
        raise ApiError("invalid_blocks")
    return text or None, raw


def _valid_block(block: Any) -> bool:
    """The checks of Slack's that a renderer most often trips: type and text length."""
    if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
        return False
    limit = BLOCK_TEXT_LIMITS.get(block["type"])
    if limit is None or "text" not in block:
        return True
    text = block["text"]
    return (
        isinstance(text, dict) and isinstance(text.get("text"), str) and len(text["text"]) <= limit
    )


def _is_ts(value: Any) -> bool:
    """A string in Slack's ts form; Slack takes a float but then never threads the reply."""
    return isinstance(value, str) and TS_PATTERN.fullmatch(value) is not None


def _wire(message: PostedMessage, *, metadata: bool = False) -> dict[str, Any]:
    wire = {"type": "message", "subtype": "bot_message", "text": message.text, "ts": message.ts}
    wire |= {"bot_id": BOT["bot_id"], "blocks": message.blocks}
    if metadata and message.metadata is not None:
        wire["metadata"] = message.metadata
    return wire | ({"thread_ts": message.thread_ts} if message.thread_ts else {})


def _flag(value: Any) -> bool:
    """A boolean argument: JSON bodies carry a boolean, forms and queries "true" or "1"."""
    return value in (True, "true", "1", 1)


def _ts_bound(value: Any, default: str | None = None) -> float | None:
    raw = default if value in (None, "") else value
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ApiError("invalid_ts_oldest") from None


def _metadata(raw: Any) -> dict[str, Any] | None:
    """Message metadata as Slack takes it (an object, or its JSON in a form): an
    ``event_type`` string and an ``event_payload`` object; else ``invalid_metadata_format``."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ApiError("invalid_metadata_format") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("event_type"), str)
        or not isinstance(raw.get("event_payload"), dict)
    ):
        raise ApiError("invalid_metadata_format")
    return {"event_type": raw["event_type"], "event_payload": raw["event_payload"]}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _parsed_blocks(blocks: Any) -> list[dict[str, Any]] | None:
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return None
    return blocks if isinstance(blocks, list) else None


def parse_call(
    content_type: str, authorization: str | None, query: str, body: bytes
) -> tuple[str | None, dict[str, Any]]:
    """The token and parameters of a request, read the way Slack reads them.

    JSON bodies must carry the token in the header; form bodies and the query string may
    also carry it as a ``token`` field.
    """
    params: dict[str, Any] = dict(parse_qsl(query))
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            raise ApiError("invalid_json") from None
        if not isinstance(parsed, dict):
            raise ApiError("invalid_json")
        params |= parsed
        params.pop("token", None)
    elif kind in ("application/x-www-form-urlencoded", ""):
        params |= dict(parse_qsl(body.decode("utf-8")))
    else:
        raise ApiError("invalid_form_data")  # multipart (file uploads) is not stood in for
    query_token = params.pop("token", None)
    scheme, _, header_token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and header_token.strip():
        return header_token.strip(), params
    return query_token, params


@dataclass(frozen=True)
class Envelope:
    """An interaction sent over Socket Mode, and when (if) the app acknowledged it."""

    id: str
    payload: dict[str, Any]
    sent_at: float
    acked_at: float | None


class SocketHub:
    """Socket Mode's server side: an app opens a WebSocket with a ticket from
    ``apps.connections.open`` (each taken once) and is greeted with ``hello``; ``push``
    sends it an envelope, whose ack (``{"envelope_id": ...}``) is recorded."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._tickets: set[str] = set()
        self._open: list[tuple[WebSocket, asyncio.AbstractEventLoop]] = []
        self._sent: dict[str, float] = {}
        self._acked: dict[str, float] = {}
        self._refusals = 0

    def refuse(self, handshakes: int) -> None:
        """Refuse the next `handshakes` WebSocket handshakes, tickets good or not (HTTP 403,
        as a proxy in the way, or Slack mid-deploy, answers)."""
        with self._changed:
            self._refusals = handshakes

    def ticket(self) -> str:
        with self._changed:
            ticket = uuid.uuid4().hex
            self._tickets.add(ticket)
            return ticket

    async def serve(self, websocket: WebSocket) -> None:
        with self._changed:
            valid = websocket.query_params.get("ticket") in self._tickets and not self._refusals
            self._refusals = max(0, self._refusals - 1)
            self._tickets.discard(websocket.query_params.get("ticket", ""))
        if not valid:
            await websocket.close(code=1008)  # before accept: the handshake is refused
            return
        await websocket.accept()
        hello = {"type": "hello", "num_connections": 1, "connection_info": {"app_id": APP_ID}}
        await websocket.send_text(json.dumps(hello))
        entry = (websocket, asyncio.get_running_loop())
        with self._changed:
            self._open.append(entry)
            self._changed.notify_all()
        try:
            while True:
                message = json.loads(await websocket.receive_text())
                envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
                with self._changed:
                    if envelope_id in self._sent and envelope_id not in self._acked:
                        self._acked[envelope_id] = time.monotonic()
                        self._changed.notify_all()
        except (WebSocketDisconnect, ValueError):
            pass
        finally:
            with self._changed:
                self._open.remove(entry)
                self._changed.notify_all()

    def wait_connected(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: bool(self._open), timeout)

    def push(self, payload: dict[str, Any], *, timeout: float, envelope_id: str = "") -> Envelope:
        """Send ``payload`` as an ``interactive`` envelope (``envelope_id`` again for a
        redelivery) and wait up to ``timeout`` for its ack."""
        if not self.wait_connected(timeout):
            raise RuntimeError("no Socket Mode connection is open")
        with self._changed:
            websocket, loop = self._open[-1]
            envelope_id = envelope_id or str(uuid.uuid4())
            retry = envelope_id in self._sent
            self._acked.pop(envelope_id, None)
            self._sent[envelope_id] = time.monotonic()
        envelope = {
            "envelope_id": envelope_id,
            "type": "interactive",
            "accepts_response_payload": True,
            "retry_attempt": int(retry),
            "retry_reason": "timeout" if retry else "",
            "payload": payload,
        }
        asyncio.run_coroutine_threadsafe(websocket.send_text(json.dumps(envelope)), loop).result(
            timeout
        )
        with self._changed:
            self._changed.wait_for(lambda: envelope_id in self._acked, timeout)
            sent_at, acked_at = self._sent[envelope_id], self._acked.get(envelope_id)
            return Envelope(envelope_id, payload, sent_at, acked_at)


def create_app(state: SlackState) -> Starlette:
    """The ASGI app: ``/api/{method}`` answered from ``state``, Socket Mode at ``/socket``."""

    async def api(request: Request) -> Response:
        method = request.path_params["method"]
        try:
            token, params = parse_call(
                request.headers.get("content-type", ""),
                request.headers.get("authorization"),
                request.url.query,
                await request.body(),
            )
        except ApiError as exc:
            return JSONResponse({"ok": False, "error": exc.code})
        answer = state.answer(method, token, params)
        if isinstance(answer.body, str):
            return PlainTextResponse(answer.body, answer.status, dict(answer.headers))
        return JSONResponse(answer.body, answer.status, dict(answer.headers))

    async def webhook(request: Request) -> Response:
        # Slack takes a JSON body, or a form whose `payload` field holds the JSON.
        body = await request.body()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            body = dict(parse_qsl(body.decode("utf-8", "replace"))).get("payload", "").encode()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        answer = state.answer_webhook(request.url.path, payload)
        return PlainTextResponse(str(answer.body), answer.status, dict(answer.headers))

    return Starlette(
        routes=[
            Route("/api/{method}", api, methods=["GET", "POST"]),
            Route("/services/{path:path}", webhook, methods=["POST"]),
            WebSocketRoute(SOCKET_PATH, state.sockets.serve),
        ]
    )


class SlackStandIn:
    """The stand-in on ``host`` (a free port unless one is given), served from a thread.

    Use as a context manager, or call ``start()`` and ``stop()``. ``url`` stays the same
    across outages, so a client built once keeps working when the outage ends.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        channels: Iterable[str] = DEFAULT_CHANNELS,
        host: str = "127.0.0.1",
        port: int = 0,
        signing_secret: str = DEFAULT_SIGNING_SECRET,
    ) -> None:
        self.state = SlackState(token, channels)
        self.signing_secret = signing_secret
        # One client for every click while started: a new one each costs ~0.2 s here.
        self._sender: httpx.Client | None = None
        self.host, self.port = host, port
        self._app = create_app(self.state)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._served: Future[None] | None = None

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """What ``WebClient(base_url=...)`` takes: the URL with ``/api/``."""
        return f"{self.url}/api/"

    def webhook_url(self, channel: str = DEFAULT_CHANNELS[0]) -> str:
        """An incoming webhook's URL, posting to `channel` (Alertmanager's ``api_url``)."""
        return self.url + self.state.webhook_path(channel)

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SlackStandIn:
        """Start serving and wait until connections are accepted."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rig-slack", daemon=True
        )
        self._thread.start()
        self._listen()
        self._sender = httpx.Client()
        return self

    def stop(self) -> None:
        """Stop serving, then the loop and its thread."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self._unlisten()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()
        self._loop, self._thread = None, None

    # -- controls -------------------------------------------------------------------------

    def rate_limit(self, calls: int, retry_after: int = 1) -> None:
        """The next ``calls`` calls answer HTTP 429, ``Retry-After: retry_after`` (seconds)."""
        self.state.rate_limit(calls, retry_after)

    def fail_next(self, calls: int, error: str, method: str | None = None) -> None:
        """The next ``calls`` authenticated calls (to ``method`` only, when given; Socket
        Mode's ``apps.connections.open`` too) answer ``{"ok": false, "error": error}``."""
        self.state.fail_next(calls, error, method)

    def outage(self, down: bool = True, *, status: int | None = None) -> None:
        """Take Slack down or bring it back.

        With no ``status`` the port stops listening, so connections are refused (what a
        network or DNS failure looks like to a sender); with ``status`` (say 503) it keeps
        listening and answers that status with a non-JSON body, like an edge proxy in a
        partial outage.
        """
        if not down:
            self.state.outage_status = None
            if self._server is None:
                self._listen()
            return
        if status is None:
            self._unlisten()
        else:
            self.state.outage_status = status

    def reset(self) -> None:
        """Forget messages and calls, end outages and rate limits."""
        self.state.reset()
        if self._server is None and self._loop is not None:
            self._listen()

    # -- what tests read ------------------------------------------------------------------

    def revoke_scope(self, scope: str, revoked: bool = True) -> None:
        """Take an OAuth scope (``channels:history``) from the bot's token: the calls that
        need it answer ``missing_scope`` until ``revoke_scope(scope, False)``."""
        self.state.revoke_scope(scope, revoked)

    def channel_id(self, channel: str) -> str:
        """The ID of a channel given by name, ``#name`` or ID; KeyError if there is none."""
        return self.state.channel_id(channel)

    def add_channel(self, name: str) -> str:
        """Create a channel the bot can post to (if new) and return its ID."""
        return self.state.add_channel(name)

    def delete(self, ts: str) -> None:
        """Delete the message ``ts``, as a user deleting it in Slack; its replies stay."""
        self.state.delete(ts)

    def archive(self, channel: str, archived: bool = True) -> None:
        """Archive a channel (name or ID), or unarchive it with ``archived=False``."""
        self.state.archive(channel, archived)

    def deactivate(self, inactive: bool = True) -> None:
        """Deactivate the bot's account (every call: ``account_inactive``), or reactivate it."""
        self.state.deactivate(inactive)

    def add_user(self, user: str, name: str, groups: Iterable[str] = ()) -> None:
        """A workspace member (``users.info``), in the user groups ``groups`` (S... ids)."""
        self.state.add_user(user, name, groups)

    # -- what people do: clicks, sent signed to the app's interactivity URL ------------------

    def click(self, url: str, ts: str, action_id: str, user: str, **signing: Any) -> Delivery:
        """``user`` clicks the button ``action_id`` of message ``ts``: a ``block_actions``
        payload posted, signed, to ``url``. Only a button the message shows can be clicked
        (KeyError otherwise). ``signing``: ``timestamp`` (an old one is a replay) and
        ``secret`` (a wrong one), as ``deliver`` takes them."""
        return self.deliver(url, self._click_payload(ts, action_id, user), **signing)

    def socket_click(self, ts: str, action_id: str, user: str, timeout: float = 3.0) -> Envelope:
        """The same click sent over Socket Mode to the connected app; the envelope says
        whether (and when) the app acknowledged it within ``timeout``."""
        return self.state.sockets.push(self._click_payload(ts, action_id, user), timeout=timeout)

    def socket_redeliver(self, envelope: Envelope) -> Envelope:
        """Send an envelope again (as Slack does when an ack is late), same id and payload."""
        return self.state.sockets.push(envelope.payload, timeout=3.0, envelope_id=envelope.id)

    def refuse_sockets(self, handshakes: int) -> None:
        """Refuse the next ``handshakes`` Socket Mode WebSocket handshakes (HTTP 403)."""
        self.state.sockets.refuse(handshakes)

    def wait_socket(self, timeout: float = 10.0) -> bool:
        """Whether an app holds a Socket Mode connection (waiting up to ``timeout``)."""
        return self.state.sockets.wait_connected(timeout)

    @property
    def app_token(self) -> str:
        """The app-level token (``xapp-``) that ``apps.connections.open`` takes."""
        return self.state.app_token

    def _click_payload(self, ts: str, action_id: str, user: str) -> dict[str, Any]:
        message = self.message(ts)
        for block in message.blocks:
            for element in block.get("elements", []) if block.get("type") == "actions" else ():
                if element.get("action_id") == action_id:
                    action = element | {"block_id": block.get("block_id"), "action_ts": _now_ts()}
                    break
            else:
                continue
            break
        else:
            raise KeyError(f"message {ts} has no button {action_id!r}")
        name = self.state.user_name(user)
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": name, "name": name, "team_id": TEAM["team_id"]},
            "api_app_id": APP_ID,
            "team": {"id": TEAM["team_id"], "domain": "standin"},
            "container": {"type": "message", "message_ts": ts, "channel_id": message.channel},
            "trigger_id": self.state.trigger(user),
            "channel": {"id": message.channel},
            "message": _wire(message),
            "actions": [action],
        }
        return payload

    def submit(self, url: str, view_id: str, user: str, **signing: Any) -> Delivery:
        """``user`` presses the submit button of the modal ``view_id`` (``views()``)."""
        [opened] = [v for v in self.state.views() if v.id == view_id]
        name = self.state.user_name(user)
        payload = {
            "type": "view_submission",
            "user": {"id": user, "username": name, "name": name, "team_id": TEAM["team_id"]},
            "api_app_id": APP_ID,
            "team": {"id": TEAM["team_id"], "domain": "standin"},
            "trigger_id": self.state.trigger(user),
            "view": opened.view | {"id": opened.id, "hash": f"{opened.id}.hash", "state": {}},
        }
        return self.deliver(url, payload, **signing)

    def deliver(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> Delivery:
        """Post ``payload`` as Slack posts interactions: a form field ``payload``, signed
        with v0 (HMAC-SHA256 of ``v0:{timestamp}:{body}``) under ``signing_secret``."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": str(timestamp),
            "x-slack-signature": sign(secret or self.signing_secret, timestamp, body),
        }
        return self.redeliver(Delivery(url, body, headers, 0))

    def redeliver(self, delivery: Delivery) -> Delivery:
        """Send the same request again, byte for byte (Slack's retry, or a replay)."""
        assert self._sender is not None, "start() first"
        answer = self._sender.post(
            delivery.url, content=delivery.body, headers=delivery.headers, timeout=CLICK_TIMEOUT_S
        )
        return replace(delivery, status=answer.status_code, answer=answer.text)

    def ephemerals(self) -> list[Ephemeral]:
        """The private answers users saw, oldest first."""
        return self.state.ephemerals()

    def views(self) -> list[OpenView]:
        """The modals opened, oldest first."""
        return self.state.views()

    def calls(self, method: str | None = None) -> list[SlackCall]:
        """Every call received, oldest first, optionally only those to ``method``."""
        return self.state.calls(method)

    def messages(self, channel: str | None = None) -> list[PostedMessage]:
        """Top-level messages as they read now, oldest first (thread replies excluded)."""
        wanted = None if channel is None else self.channel_id(channel)
        return [
            m
            for m in self.state.all_messages()
            if not m.is_reply and (wanted is None or m.channel == wanted)
        ]

    def message(self, ts: str) -> PostedMessage:
        """The message with this ts, as it reads now; KeyError if none."""
        found = [m for m in self.state.all_messages() if m.ts == ts]
        if not found:
            raise KeyError(ts)
        return found[0]

    def replies(self, thread_ts: str) -> list[PostedMessage]:
        """The replies in the thread of ``thread_ts``, in the order they were posted."""
        return [m for m in self.state.all_messages() if m.is_reply and m.thread_ts == thread_ts]

    def orphans(self) -> list[PostedMessage]:
        """Replies whose parent does not exist in that channel: never seen by anyone."""
        messages = self.state.all_messages()
        parents = {(m.channel, m.ts) for m in messages}
        return [m for m in messages if m.is_reply and (m.channel, m.thread_ts) not in parents]

    # -- the listener ---------------------------------------------------------------------

    def _listen(self) -> None:
        assert self._loop is not None, "start() first"
        sock = listen(self.host, self.port)
        # Kept after the first bind so that outages end on the same URL.
        self.port = sock.getsockname()[1]
        config = uvicorn_config(self._app)
        config.ws = "websockets-sansio"  # Socket Mode's endpoint
        self.state.socket_url = f"ws://{self.host}:{self.port}{SOCKET_PATH}"
        server = uvicorn.Server(config)
        served = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), self._loop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if served.done() or time.monotonic() > deadline:
                sock.close()
                served.result(timeout=0)  # raises what stopped it
                raise RuntimeError("the Slack stand-in did not start")
            time.sleep(0.005)
        self._server, self._served = server, served

    def _unlisten(self) -> None:
        if self._server is None or self._served is None:
            return
        self._server.should_exit = True
        self._served.result(timeout=STOP_TIMEOUT_S)
        self._server, self._served = None, None
