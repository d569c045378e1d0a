"""`POST /api/v1/slack/interactions`: Slack's HTTP transport for clicks on incident messages.

Answers, chosen for how Slack reads them (anything but a 200 within 3 s shows the clicker an
error; it never retries a 4xx):
- 200 with an empty body: acted on (or already acted on: a retried delivery acts once);
- 401 a missing or wrong v0 signature, or a timestamp over 5 minutes away (a replay);
- 400 a signed body that is not an interaction of ours (malformed, unknown action or incident);
- 503 no signing secret configured, or the database unavailable.
Every refusal is one log line, never a 5xx for what the request carried. The handlers are
`oncall/flows.py`'s, shared with the other transport.
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qs

import anyio.to_thread
import sqlalchemy as sa
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reliability import db
from reliability.intake.http import Rejection, read_body
from reliability.notify.interactions import BadInteraction, BadSignature, parse, verify
from reliability.oncall.flows import SlackActions

log = logging.getLogger("reliability.oncall.route")

PATH = "/api/v1/slack/interactions"


def interactions_route(actions: SlackActions, *, secret: SecretStr | None) -> Route:
    """The endpoint; `secret` None answers 503 to everyone, never an open door."""

    async def receive(request: Request) -> Response:
        try:
            if secret is None:
                raise Rejection(503, "Slack interactions are off: set slack.signing_secret_env")
            body = await read_body(request)
            try:
                verify(secret.get_secret_value(), body, request.headers, now=time.time())
                click = parse(_payload(body))
                await anyio.to_thread.run_sync(actions.handle, click)
            except BadSignature as exc:
                raise Rejection(401, f"not signed by Slack: {exc}") from None
            except BadInteraction as exc:
                raise Rejection(400, f"not an interaction we handle: {exc}") from None
            except (db.DatabaseError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                raise Rejection(503, "database unavailable, retry later") from exc
        except Rejection as rejection:
            client = request.client.host if request.client else "unknown"
            log.warning(
                "slack interaction from %s refused with %d: %s",
                client,
                rejection.status,
                rejection.error,
            )
            return rejection.response()
        return Response(status_code=200)

    return Route(PATH, receive, methods=["POST"])


def _payload(body: bytes) -> object:
    """The JSON in the form field `payload`, as Slack posts interactions."""
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
        return json.loads(fields["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError):
        raise BadInteraction("body is not a form with a JSON `payload` field") from None
