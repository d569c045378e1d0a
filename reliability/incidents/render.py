"""How incidents look on a terminal: the rich styles of their severities, statuses and
silences, short spans of time, and the `incidents list` table drawn from its JSON document
(the same whether the daemon or the database gave it). Shared by `incidents/cli.py` and
`status/render.py`; imports no database layer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table
from rich.text import Text

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


def labels_text(labels: Mapping[str, str]) -> str:
    """`key=value` pairs, sorted by key."""
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def incident_table(items: list[dict[str, Any]]) -> Table:
    """`incidents list`'s table from its JSON document (listing.listing's items)."""
    table = Table(box=None, header_style="bold")
    for col in ("ID", "SEV", "STATUS", "AGE", "SEEN", "TITLE", "LABELS"):
        table.add_column(col, overflow="fold")
    for i in items:
        by = f" ({i['acknowledged_by']})" if i["acknowledged_by"] else ""
        status = Text(i["status"] + by, STATUS_STYLE[i["status"]])
        if i["silenced_by"] is not None:
            status.append(f" silenced #{i['silenced_by']}", SILENCE_STYLE["active"])
        if i["in_maintenance"] is not None:
            status.append(f" in maintenance #{i['in_maintenance']}", SILENCE_STYLE["active"])
        table.add_row(
            str(i["id"]),
            Text(i["severity"], SEVERITY_STYLE[i["severity"]]),
            status,
            age(datetime.fromisoformat(i["started_at"])),
            f"{i['occurrences']}x, {age(datetime.fromisoformat(i['last_seen_at']))} ago",
            Text(i["title"]),
            Text(labels_text(i["labels"])),
        )
    return table
