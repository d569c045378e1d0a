"""`POST /api/v1/alertmanager`: Alertmanager's webhook (payload version 4) into incidents.

Each alert is one incident, keyed `alertmanager:<alert fingerprint>`: a firing alert opens
it or, repeated, refires it (occurrences + 1); a resolved alert resolves it. One webhook is
one database transaction, so a failure part-way leaves nothing behind and Alertmanager's
retry starts clean.

Answers, chosen for how Alertmanager retries (it retries 5xx, never 4xx):
- 200 with the counts of what was done;
- 400 malformed JSON, wrong version, missing or mistyped fields; 401 missing or wrong
  bearer token; 413 body over 1 MB; 415 not JSON: the sender must change, a retry cannot help;
- 503 no token configured (the intake refuses everyone rather than run unauthenticated), or
  the database unavailable: a retry helps once the operator fixes it.
Every refusal is a JSON `{"error", "details"}` and one log line; the token is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
)
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reliability import db
from reliability.incidents import service
from reliability.incidents.models import Severity
from reliability.intake.http import (
    Rejection,
    check_bearer,
    check_json_content_type,
    parse_json,
    read_body,
    validation_details,
)

log = logging.getLogger("reliability.intake.alertmanager")

PATH = "/api/v1/alertmanager"
SOURCE = "alertmanager"
FINGERPRINT_PREFIX = "alertmanager:"

# Alertmanager has no fixed severity vocabulary; these are the common spellings. Anything
# else, or none, is a warning: never silently info, never paged as critical.
_SEVERITIES = {
    **dict.fromkeys(("critical", "page", "error", "high", "emergency", "fatal"), Severity.critical),
    **dict.fromkeys(("warning", "warn", "medium"), Severity.warning),
    **dict.fromkeys(("info", "informational", "notice", "low", "none"), Severity.info),
}


# --- the payload (notify/webhook/webhook.go Message, template.Data and template.Alert) ------


class _Payload(BaseModel):
    # Unknown fields are ignored: a newer Alertmanager may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)


class AlertmanagerAlert(_Payload):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: AwareDatetime = Field(alias="startsAt")
    # Go's zero time (0001-01-01T00:00:00Z) while a firing alert's end is unknown.
    ends_at: AwareDatetime = Field(alias="endsAt")
    generator_url: str = Field(alias="generatorURL")
    # Alertmanager's label-set hash, "%016x"; also what keeps the incident key short.
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class AlertmanagerWebhook(_Payload):
    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    # Alerts dropped by the receiver's max_alerts; older Alertmanagers do not send it.
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    receiver: str
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert]
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")


# --- alerts into incidents ----------------------------------------------------------------


@dataclass
class IntakeCounts:
    """What one webhook did; the body of the 200 answer."""

    opened: int = 0
    updated: int = 0
    reopened: int = 0
    resolved: int = 0
    # Resolved alerts with no unresolved incident: never seen firing, or already resolved.
    unknown_resolved: int = 0


def incident_fingerprint(alert: AlertmanagerAlert) -> str:
    return FINGERPRINT_PREFIX + alert.fingerprint


def incident_title(alert: AlertmanagerAlert) -> str:
    """`alertname: summary`, the two things a person reads first."""
    name = alert.labels.get("alertname") or "unnamed alert"
    summary = alert.annotations.get("summary", "").strip()
    return f"{name}: {summary}" if summary else name


def incident_severity(alert: AlertmanagerAlert) -> Severity:
    return _SEVERITIES.get(alert.labels.get("severity", "").strip().lower(), Severity.warning)


def record_webhook(
    session: Session, webhook: AlertmanagerWebhook, *, now: datetime, reopen_window: timedelta
) -> IntakeCounts:
    """Apply every alert of the webhook in `session`; the caller commits (one transaction).

    Everything happens at `now`, when we heard of it: a repeat carries its unchanged
    `startsAt`, which would never move `last_seen_at`, and an `endsAt` from before our own
    receipt of the firing would resolve an incident before it started.
    """
    counts = IntakeCounts()
    # In fingerprint order (stable: one alert's repeats keep theirs), so two webhooks that
    # carry the same alerts in other orders lock their incidents in one order: no deadlock.
    for alert in sorted(webhook.alerts, key=incident_fingerprint):
        if alert.status == "firing":
            upsert = service.open_or_update(
                session,
                fingerprint=incident_fingerprint(alert),
                title=incident_title(alert),
                severity=incident_severity(alert),
                source=SOURCE,
                labels=alert.labels,
                summary=alert.annotations.get("description"),
                at=now,
                reopen_window=reopen_window,
            )
            if upsert.action == "opened":
                counts.opened += 1
            elif upsert.action == "reopened":
                counts.reopened += 1
            else:
                counts.updated += 1
        elif service.resolve_fingerprint(
            session, fingerprint=incident_fingerprint(alert), by=SOURCE, at=now
        ):
            counts.resolved += 1
        else:
            counts.unknown_resolved += 1
    return counts


# --- the endpoint -------------------------------------------------------------------------


def parse_webhook(data: Any) -> AlertmanagerWebhook:
    """The validated payload; 400 naming every missing or wrong field."""
    try:
        return AlertmanagerWebhook.model_validate(data)
    except ValidationError as exc:
        raise Rejection(
            400, "not an Alertmanager version 4 webhook", validation_details(exc)
        ) from None


def _store(
    sessions: Callable[[], Session], webhook: AlertmanagerWebhook, reopen_window: timedelta
) -> IntakeCounts:
    try:
        with sessions() as session, session.begin():
            return record_webhook(
                session, webhook, now=datetime.now(UTC), reopen_window=reopen_window
            )
    except (db.DatabaseError, OperationalError, InterfaceError, service.IncidentError) as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise Rejection(503, "database unavailable, retry later", [cause]) from exc


def alertmanager_route(
    sessions: Callable[[], Session],
    *,
    token: SecretStr | None,
    reopen_window: timedelta,
    transactions: int = 1,
) -> Route:
    """The webhook endpoint. `sessions()` gives a new session per webhook; `token` None
    turns the endpoint into a 503 for everyone, never an open door.

    At most `transactions` webhooks are stored at once; the others wait here, in order. On
    SQLite keep it 1: it has one writer, and transactions beyond it wait in its busy handler,
    which sleeps in steps of up to 100 ms (p99 in seconds under load instead of milliseconds).
    """
    limiter = anyio.CapacityLimiter(transactions)

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
            # Database work blocks: keep it off the event loop.
            counts = await anyio.to_thread.run_sync(
                _store, sessions, webhook, reopen_window, limiter=limiter
            )
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
