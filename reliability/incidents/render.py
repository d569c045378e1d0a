"""How incidents look on a terminal: the rich styles of their severities, statuses and
silences, and short spans of time. Shared by `incidents/cli.py` and `status/render.py`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reliability.incidents.models import Incident, IncidentRead

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"open": "red", "acknowledged": "yellow", "resolved": "green"}
SILENCE_STYLE = {"active": "magenta", "expired": "dim", "ended": "dim"}


def age(since: datetime) -> str:
    """How long ago `since` was, in its largest whole unit (`3h`)."""
    return span(datetime.now(UTC) - since)


def span(delta: timedelta) -> str:
    """A span of time in its largest whole unit: `2d`, `3h`, `5m`, `40s`."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def labels_text(incident: Incident | IncidentRead) -> str:
    """`key=value` pairs, sorted by key."""
    return " ".join(f"{k}={v}" for k, v in sorted(incident.labels.items()))
