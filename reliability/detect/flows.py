"""Rule transitions into incidents: what the detection loop (`detect/loop.py`) records.

Firings open or refire incidents and resolutions resolve them, through `incidents.flows`, so
each change's notification is written with it; all in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.detect.evaluator import FINGERPRINT_PREFIX, Transition
from reliability.incidents import flows
from reliability.incidents.models import Incident, IncidentStatus


def record_transitions(
    session: Session, *, transitions: Sequence[Transition], reopen_window: float
) -> None:
    """Write transitions as incidents, in order, in the caller's transaction."""
    for t in transitions:
        at = datetime.fromtimestamp(t.at, UTC)
        if t.kind == "resolved":
            flows.resolve_fingerprint(session, fingerprint=t.fingerprint, by=t.rule, at=at)
            continue
        flows.open_or_update(
            session,
            fingerprint=t.fingerprint,
            title=t.title,
            severity=t.severity,
            source="rule",
            labels=t.labels,
            summary=t.summary,
            at=at,
            reopen_window=timedelta(seconds=reopen_window),
            data={
                "rule": t.rule,
                "value": t.value_text,
                "threshold": t.threshold_text,
                "since": datetime.fromtimestamp(t.since, UTC).isoformat(),
                "runbook": t.runbook,
            },
        )


def open_rule_fingerprints(session: Session) -> list[str]:
    """Fingerprints of the unresolved incidents the rules raised."""
    return list(
        session.scalars(
            sa.select(Incident.fingerprint).where(
                Incident.status != IncidentStatus.resolved,
                Incident.fingerprint.startswith(FINGERPRINT_PREFIX),
            )
        )
    )
