"""Socket Mode: Slack's transport for clicks with no public URL. The daemon opens a WebSocket
to Slack (`apps.connections.open` with the app-level token, slack_sdk's built-in client,
which reconnects on its own) and Slack sends each click down it as an envelope.

Each `interactive` envelope goes to the same handlers as the HTTP route (`flows.py`) and is
acknowledged once they return (they answer within Slack's 3 s; slow work comes after). A
payload we cannot act on is acknowledged too, with a log line: Slack would only send it
again. A redelivered envelope carries the same click, which the handlers act on once.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from reliability import db
from reliability.notify.interactions import BadInteraction, parse
from reliability.oncall.flows import SlackActions

log = logging.getLogger("reliability.oncall.socket")

TIMEOUT_S = 10


class SocketTransport:
    """Clicks over Socket Mode into `actions`; `start()` connects, `stop()` closes."""

    def __init__(self, actions: SlackActions, *, app_token: SecretStr, base_url: str) -> None:
        self._actions = actions
        self._client = SocketModeClient(
            app_token=app_token.get_secret_value(),
            web_client=WebClient(base_url=base_url, timeout=TIMEOUT_S, retry_handlers=[]),
            logger=logging.getLogger("reliability.oncall.slack_sdk"),
        )
        self._client.socket_mode_request_listeners.append(self._on_request)

    def start(self) -> None:
        self._client.connect()
        log.info("slack: Socket Mode connected; clicks arrive over it")

    def stop(self) -> None:
        self._client.close()

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
