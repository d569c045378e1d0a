"""Socket Mode: Slack's transport for clicks with no public URL. The daemon opens a WebSocket
to Slack (`apps.connections.open` with the app-level token, then slack_sdk's built-in client)
and Slack sends each click down it as an envelope.

The first connection is ours to make: `start()` returns at once and a thread tries, each
attempt a fresh URL and a WebSocket, until one is open, waiting between attempts with
capped exponential backoff and jitter (Slack down or the network cut at start does not stop
the daemon, and many daemons do not retry in step). Each failed attempt is one warning
line, with the reason and never the token; slack_sdk's own lines are left out while the
first connection is tried. From then on slack_sdk's client reconnects on its own.

Each `interactive` envelope goes to the same handlers as the HTTP route (`flows.py`) and is
acknowledged once they return (they answer within Slack's 3 s; slow work comes after). A
payload we cannot act on is acknowledged too, with a log line: Slack would only send it
again. A redelivered envelope carries the same click, which the handlers act on once.
"""

from __future__ import annotations

import logging
import random
import threading

import sqlalchemy as sa
from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from reliability import db
from reliability.notify.dispatcher import backoff_s
from reliability.notify.interactions import BadInteraction, parse
from reliability.oncall.flows import SlackActions

log = logging.getLogger("reliability.oncall.socket")
SDK_LOG = logging.getLogger("reliability.oncall.slack_sdk")

TIMEOUT_S = 10
RETRY_BASE_S = 1.0
RETRY_CAP_S = 60.0
STOP_S = 5.0


class SocketTransport:
    """Clicks over Socket Mode into `actions`; `start()` connects (retrying, on a thread),
    `stop()` closes. `retry_base_s`/`retry_cap_s` bound the wait between first attempts."""

    def __init__(
        self,
        actions: SlackActions,
        *,
        app_token: SecretStr,
        base_url: str,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
        rng: random.Random | None = None,
    ) -> None:
        self._actions = actions
        self._token = app_token.get_secret_value()
        self._retry = (retry_base_s, retry_cap_s)
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None
        self._client = SocketModeClient(
            app_token=self._token,
            web_client=WebClient(
                base_url=base_url, timeout=TIMEOUT_S, retry_handlers=[], logger=SDK_LOG
            ),
            logger=SDK_LOG,
            auto_reconnect_enabled=False,  # turned on once we are connected
        )
        self._client.socket_mode_request_listeners.append(self._on_request)
        self._client.on_error_listeners.append(self._on_error)

    def start(self) -> None:
        """Connect on a thread of its own, until connected or stopped; returns at once."""
        self._thread = threading.Thread(target=self._connect, name="slack-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_S)
        self._client.close()

    def _connect(self) -> None:
        # Until the first connection is open, each failed attempt is our one line.
        SDK_LOG.addFilter(self._quiet)
        try:
            failures = 0
            while not self._stopping.is_set():
                problem = self._attempt()
                if problem is None:
                    log.info("slack: Socket Mode connected; clicks arrive over it")
                    return
                failures += 1
                delay = backoff_s(
                    failures, base_s=self._retry[0], cap_s=self._retry[1], rng=self._rng
                )
                log.warning(
                    "slack: Socket Mode not connected (attempt %d: %s); trying again in "
                    "%.1fs, buttons answer nothing until then",
                    failures,
                    problem.replace(self._token, "<redacted>"),
                    delay,
                )
                self._stopping.wait(delay)
        finally:
            SDK_LOG.removeFilter(self._quiet)

    def _quiet(self, _record: logging.LogRecord) -> bool:
        return False

    def _attempt(self) -> str | None:
        """One connection: a new URL from `apps.connections.open`, then its WebSocket; None
        once it is open, else why not."""
        self._error = None
        try:
            self._client.wss_uri = self._client.issue_new_wss_url()
            self._client.connect()  # logs and swallows a failed WebSocket (on_error)
        except SlackApiError as exc:
            return f"apps.connections.open answered {exc.response.get('error')}"
        except Exception as exc:  # urllib's, the socket's
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        if not self._client.is_connected():
            return f"WebSocket: {self._error or 'handshake refused'}"
        self._client.auto_reconnect_enabled = self._client.default_auto_reconnect_enabled = True
        return None

    def _on_error(self, error: Exception) -> None:
        self._error = error

    def _on_request(self, client: SocketModeClient, request: SocketModeRequest) -> None:
        try:
            if request.type == "interactive":
                self._actions.handle(parse(request.payload))
            else:
                log.info("slack: Socket Mode %s envelope ignored", request.type)
        except BadInteraction as exc:
            log.warning("slack: Socket Mode interaction refused: %s", exc)
        except (db.DatabaseError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            log.warning("slack: Socket Mode interaction not handled: %s", exc)
            return  # no ack: Slack sends it again, by when the database may be back
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
