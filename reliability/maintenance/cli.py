"""`reliability maintenance ...`: planned work on a node, a pool, a service or the whole
fleet (start), the windows in force or to come (list), and ending one early (end).

Times are as `oncall` takes them: `now`, relative (`+2h`), or ISO 8601 with an offset;
they print in UTC. Exit 2 for bad input (an unknown node, a window that ends before it
starts or lasts over 7 days), 1 for a window that cannot be ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
from rich.markup import escape
from rich.table import Table

from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    database,
    json_option,
    print_json,
    time_option,
    who,
)
from reliability.config import Config
from reliability.durations import format_duration, parse_duration
from reliability.incidents import service as incidents
from reliability.incidents.models import IncidentStatus
from reliability.maintenance import flows, service
from reliability.maintenance.models import MaintenanceWindow, MaintenanceWindowRead


@click.group()
def maintenance() -> None:
    """Maintenance windows: incidents in scope are recorded but page nobody."""


def _json(window: MaintenanceWindow, now: datetime) -> dict[str, object]:
    read = MaintenanceWindowRead.model_validate(window).model_dump(mode="json")
    return read | {"scope": window.shown, "state": service.state(window, now=now)}


def _covers(window: MaintenanceWindow) -> str:
    if window.scope == "fleet":
        return "every incident"
    return "; ".join(f"{label} {', '.join(values)}" for label, values in window.targets.items())


def _at(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M}Z"


@maintenance.command("start")
@click.argument("scope", metavar="SCOPE")
@click.option("--for", "for_", metavar="DURATION", help="How long, e.g. 2h, 1d (at most 7d).")
@click.option("--until", "until_text", metavar="TIME", help="Or until when: +3h, ISO 8601.")
@click.option("--at", "at_text", metavar="TIME", help="From when (default now): +1h, ISO.")
@click.option("--reason", required=True, help="Why: whoever is paged afterwards reads it.")
@click.option("--by", default=who, help="Who does the work (default: your user name).")
@config_option
@json_option
def start(
    config: Config,
    scope: str,
    for_: str | None,
    until_text: str | None,
    at_text: str | None,
    reason: str,
    by: str,
    as_json: bool,
) -> None:
    """Hold pages, escalation and automatic runbooks for SCOPE (node:NAME, pool:NAME,
    service:NAME or fleet) for a while, now or --at a later time. Incidents there are still
    opened and recorded; those still unresolved when it ends page then, once. Runbooks run
    by hand still run, with a warning."""
    now = datetime.now(UTC).replace(microsecond=0)
    if (for_ is None) == (until_text is None):
        raise BadInput("say how long with --for DURATION (e.g. --for 2h) or --until TIME")
    starts_at = time_option("--at", at_text, now)
    if for_ is not None:
        try:
            ends_at = starts_at + timedelta(seconds=parse_duration(for_))
        except ValueError as exc:
            raise BadInput(f"--for: {exc}") from None
    else:
        ends_at = time_option("--until", until_text, now)
    with database(config) as s:
        try:
            window = flows.start(
                s,
                config=config,
                scope=scope,
                starts_at=starts_at,
                ends_at=ends_at,
                reason=reason,
                by=by,
                now=now,
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        scope = service.ActiveWindow.of(window)
        in_scope = [
            i.id
            for status in (IncidentStatus.open, IncidentStatus.acknowledged)
            for i in incidents.list_incidents(s, status=status, limit=10000)
            if scope.covers(i.labels)
        ]
        shown = _json(window, now) | {"unresolved_incidents_in_scope": sorted(in_scope)}
        covers = _covers(window)
    if as_json:
        print_json(shown)
        return
    length = format_duration((ends_at - starts_at).total_seconds())
    when = "from now" if starts_at == now else f"from {_at(starts_at)}"
    console.print(
        f"maintenance window #{shown['id']}: {shown['scope']} ({covers}) {when} until "
        f"{_at(ends_at)} ({length}); {len(in_scope)} unresolved incident(s) in scope now. "
        "Pages, escalation and automatic runbooks there are held until it ends.",
        markup=False,
    )


@maintenance.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include ended and cancelled ones.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@config_option
@json_option
def list_(config: Config, include_ended: bool, limit: int, as_json: bool) -> None:
    """Windows in force or to come, soonest first (--all: every one, newest first)."""
    now = datetime.now(UTC)
    with database(config) as s:
        found = service.listed(s, now=now, include_ended=include_ended, limit=limit)
        items = [(w, _json(w, now), _covers(w)) for w in found]
    if as_json:
        print_json([item for _, item, _ in items])
        return
    if not items:
        none = "No maintenance windows." if include_ended else "No maintenance now or to come."
        console.print(none)
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "SCOPE", "COVERS", "FROM", "UNTIL", "BY", "REASON"):
        table.add_column(col, overflow="fold")
    for w, item, covers in items:
        table.add_row(
            str(w.id),
            str(item["state"]),
            escape(w.shown),
            escape(covers),
            _at(w.starts_at),
            "-" if item["state"] == "cancelled" else _at(w.until),
            escape(w.created_by),
            escape(w.reason),  # text, never markup
        )
    console.print(table)


@maintenance.command("end")
@click.argument("window_id", metavar="ID", type=int)
@click.option("--by", default=who, help="Who ends it (default: your user name).")
@config_option
@json_option
def end(config: Config, window_id: int, by: str, as_json: bool) -> None:
    """End window ID now (one not started yet is cancelled); the incidents it held back
    that are still unresolved page now."""
    now = datetime.now(UTC)
    with database(config) as s:
        try:
            window, events = flows.end(s, window_id=window_id, by=by, now=now)
        except service.MaintenanceError as exc:
            raise CommandFailed(str(exc)) from None
        shown = _json(window, now)
        released = [e.incident_id for e in events]
    if as_json:
        print_json(shown | {"incidents_released": released})
        return
    how = "cancelled" if shown["state"] == "cancelled" else "ended"
    console.print(
        f"maintenance window #{window_id} ({shown['scope']}) {how}; "
        f"{len(released)} held-back incident(s) will be posted",
        markup=False,
    )
