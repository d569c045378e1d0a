"""Alerts into incidents: one Alertmanager webhook, applied through `incidents.flows` (so
each change's notification is written with it) in the caller's one transaction.

Each alert is one incident, keyed `alertmanager:<alert fingerprint>`: a firing alert opens
it or, repeated, refires it (occurrences + 1); a resolved alert resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from reliability.incidents import flows
from reliability.incidents.models import Severity
from reliability.incidents.service import Firing
from reliability.intake.models import AlertmanagerAlert, AlertmanagerWebhook

SOURCE = "alertmanager"
FINGERPRINT_PREFIX = "alertmanager:"

# Alertmanager has no fixed severity vocabulary; these are the common spellings. Anything
# else, or none, is a warning: never silently info, never paged as critical.
_SEVERITIES = {
    **dict.fromkeys(("critical", "page", "error", "high", "emergency", "fatal"), Severity.critical),
    **dict.fromkeys(("warning", "warn", "medium"), Severity.warning),
    **dict.fromkeys(("info", "informational", "notice", "low", "none"), Severity.info),
}


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


def record_alertmanager_webhook(
    session: Session, *, webhook: AlertmanagerWebhook, now: datetime, reopen_window: timedelta
) -> IntakeCounts:
    """Apply every alert of the webhook in `session`; the caller commits (one transaction).

    Everything happens at `now`, when we heard of it: a repeat carries its unchanged
    `startsAt`, which would never move `last_seen_at`, and an `endsAt` from before our own
    receipt of the firing would resolve an incident before it started.
    """
    counts = IntakeCounts()
    firing: list[Firing] = []

    def upsert_firing() -> None:
        # A run of firing alerts in one call: their incidents, events and outbox rows are
        # written a statement per kind, not per alert.
        if not firing:
            return
        for upsert in flows.open_or_update_many(
            session, firings=firing, reopen_window=reopen_window
        ):
            if upsert.action == "opened":
                counts.opened += 1
            elif upsert.action == "reopened":
                counts.reopened += 1
            else:
                counts.updated += 1
        firing.clear()

    # In fingerprint order (stable: one alert's repeats keep theirs), so two webhooks that
    # carry the same alerts in other orders lock their incidents in one order: no deadlock.
    for alert in sorted(webhook.alerts, key=incident_fingerprint):
        if alert.status == "firing":
            firing.append(
                Firing(
                    incident_fingerprint(alert),
                    title=incident_title(alert),
                    severity=incident_severity(alert),
                    source=SOURCE,
                    labels=alert.labels,
                    summary=alert.annotations.get("description"),
                    at=now,
                )
            )
            continue
        upsert_firing()
        if flows.resolve_fingerprint(
            session, fingerprint=incident_fingerprint(alert), by=SOURCE, at=now
        ):
            counts.resolved += 1
        else:
            counts.unknown_resolved += 1
    upsert_firing()
    return counts
