"""`POST /api/v1/alertmanager`: Alertmanager's webhook (payload version 4) into incidents.

The payload is `intake/models.py`, what each alert does to incidents `intake/flows.py`. Each
webhook is written through the daemon's `BatchWriter` (`writer.py`): webhooks that arrive
together share one transaction, and each is still all or nothing (a failed batch is written
again one webhook at a time), so a failure part-way leaves nothing of that webhook behind and
Alertmanager's retry starts clean. The answer comes once its transaction committed.

Answers, chosen for how Alertmanager retries (it retries 5xx, never 4xx):
- 200 with the counts of what was done;
- 400 malformed JSON, wrong version, missing or mistyped fields; 401 missing or wrong
  bearer token; 413 body over 1 MB; 415 not JSON: the sender must change, a retry cannot help;
- 503 no token configured (the intake refuses everyone rather than run unauthenticated),
  the database unavailable, or the writer's queue full or closing (the daemon stops): a
  retry helps once the operator fixes it, or at once.
Every refusal is a JSON `{"error", "details"}` and one log line; the token is never logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reliability import db
from reliability.incidents import service
from reliability.intake import flows
from reliability.intake.flows import IntakeCounts
from reliability.intake.http import (
    Rejection,
    check_bearer,
    check_json_content_type,
    parse_json,
    read_body,
    validation_details,
)
from reliability.intake.models import AlertmanagerWebhook
from reliability.writer import BatchWriter, WriterBusy, WriterClosed

log = logging.getLogger("reliability.intake.alertmanager")

PATH = "/api/v1/alertmanager"


def parse_webhook(data: Any) -> AlertmanagerWebhook:
    """The validated payload; 400 naming every missing or wrong field."""
    try:
        return AlertmanagerWebhook.model_validate(data)
    except ValidationError as exc:
        raise Rejection(
            400, "not an Alertmanager version 4 webhook", validation_details(exc)
        ) from None


async def _store(
    writer: BatchWriter, webhook: AlertmanagerWebhook, reopen_window: timedelta
) -> IntakeCounts:
    def work(session: Session) -> IntakeCounts:
        return flows.record_alertmanager_webhook(
            session, webhook=webhook, now=datetime.now(UTC), reopen_window=reopen_window
        )

    try:
        # The writer's thread does the database work: the event loop only waits for it.
        return await asyncio.wrap_future(writer.submit(work))
    except (WriterBusy, WriterClosed) as exc:
        raise Rejection(503, "intake busy, retry later", [str(exc)]) from None
    except (db.DatabaseError, OperationalError, InterfaceError, service.IncidentError) as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise Rejection(503, "database unavailable, retry later", [cause]) from exc


def alertmanager_route(
    writer: BatchWriter, *, token: SecretStr | None, reopen_window: timedelta
) -> Route:
    """The webhook endpoint, storing through `writer`; `token` None turns the endpoint
    into a 503 for everyone, never an open door."""

    async def receive(request: Request) -> Response:
        try:
            if token is None:
                raise Rejection(
                    503,
                    "webhook intake is disabled: no token configured "
                    "(set http.webhook_token_env or http.webhook_token_file)",
                )
            check_bearer(request, token)
            check_json_content_type(request)
            webhook = parse_webhook(parse_json(await read_body(request)))
            counts = await _store(writer, webhook, reopen_window)
        except Rejection as rejection:
            _log_rejection(request, rejection)
            return rejection.response()
        _log_accepted(webhook, counts)
        return JSONResponse(asdict(counts))

    return Route(PATH, receive, methods=["POST"])


def _log_rejection(request: Request, rejection: Rejection) -> None:
    client = request.client.host if request.client else "unknown"
    details = f" ({'; '.join(rejection.details)})" if rejection.details else ""
    log.warning(
        "alertmanager webhook from %s refused with %d: %s%s",
        client,
        rejection.status,
        rejection.error,
        details,
    )


def _log_accepted(webhook: AlertmanagerWebhook, counts: IntakeCounts) -> None:
    log.info(
        "alertmanager webhook for receiver %s: %d alert(s), %s",
        webhook.receiver,
        len(webhook.alerts),
        ", ".join(f"{name} {value}" for name, value in asdict(counts).items() if value),
    )
    if webhook.truncated_alerts:
        log.warning(
            "alertmanager dropped %d alert(s) of group %s: raise max_alerts of receiver %s",
            webhook.truncated_alerts,
            webhook.group_key,
            webhook.receiver,
        )
