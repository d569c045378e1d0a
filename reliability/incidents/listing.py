"""What `incidents list` shows, as the JSON document its `--json` prints: read by the
command itself (`--direct`, or no daemon answering) or by the daemon for it
(`GET /api/v1/incidents`), with this one query either way."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from reliability.incidents import service, silences
from reliability.incidents.kinds import (
    LIST_MAX_LIMIT,
    LIST_STATUSES,
    UNRESOLVED_STATUSES,
    IncidentStatus,
)
from reliability.incidents.models import IncidentRead
from reliability.maintenance import service as maintenance


def listing(session: Session, *, status: str, limit: int, now: datetime) -> list[dict[str, Any]]:
    """Incidents in `status` (one of LIST_STATUSES), most recently seen first, at most
    `limit`: each `IncidentRead` as JSON, `silenced_by`, the silence muting it at `now`, and
    `in_maintenance`, the maintenance window holding it (None when none does). ValueError
    for a status or limit the command would refuse."""
    if status not in LIST_STATUSES:
        raise ValueError(f"status must be one of {', '.join(LIST_STATUSES)}, not {status!r}")
    if not 1 <= limit <= LIST_MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {LIST_MAX_LIMIT}, not {limit}")
    if status == "unresolved":
        # Both unresolved states, each limited, merged: resolved ones never crowd them out.
        rows = sorted(
            (
                i
                for s in UNRESOLVED_STATUSES
                for i in service.list_incidents(session, status=s, limit=limit)
            ),
            key=lambda i: (i.last_seen_at, i.id),
            reverse=True,
        )[:limit]
    else:
        wanted = None if status == "all" else IncidentStatus(status)
        rows = service.list_incidents(session, status=wanted, limit=limit)
    items = [IncidentRead.model_validate(i) for i in rows]
    in_force = silences.active(session, now=now)
    windows = maintenance.active(session, now=now)
    return [
        i.model_dump(mode="json")
        | {
            "silenced_by": s.id if (s := silences.covering(in_force, i.labels)) else None,
            "in_maintenance": w.id if (w := maintenance.covering(windows, i.labels)) else None,
        }
        for i in items
    ]
