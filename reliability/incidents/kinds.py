"""An incident's severities and statuses, apart from the tables: the commands that only
read through the daemon name them without importing the database layer."""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    critical = "critical"
    warning = "warning"
    info = "info"


class IncidentStatus(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"


UNRESOLVED_STATUSES = (IncidentStatus.open, IncidentStatus.acknowledged)
# What `incidents list --status --limit` (and the daemon's GET /api/v1/incidents) take.
LIST_STATUSES = (*(s.value for s in IncidentStatus), "unresolved", "all")
LIST_DEFAULT_STATUS = "unresolved"
LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT = 100, 10000
