"""`reliability incidents ...`: list, show, open, ack, resolve, note."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table

from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    database,
    json_option,
    print_json,
)
from reliability.config import Config
from reliability.incidents import service
from reliability.incidents.models import (
    Incident,
    IncidentEventRead,
    IncidentRead,
    IncidentStatus,
    Severity,
)

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"open": "red", "acknowledged": "yellow", "resolved": "green"}


def _age(since: datetime) -> str:
    seconds = int((datetime.now(UTC) - since).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _labels(incident: Incident | IncidentRead) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(incident.labels.items()))


@click.group()
def incidents() -> None:
    """Incidents: list, show, open, acknowledge, resolve."""


@incidents.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in IncidentStatus] + ["unresolved", "all"]),
    default="unresolved",
    show_default=True,
)
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@config_option
@json_option
def list_(config: Config, status: str, limit: int, as_json: bool) -> None:
    """List incidents, most recently seen first."""
    with database(config) as session:
        if status == "unresolved":
            # Both unresolved states, each limited, merged: resolved ones never crowd them out.
            rows = sorted(
                (
                    i
                    for s in (IncidentStatus.open, IncidentStatus.acknowledged)
                    for i in service.list_incidents(session, status=s, limit=limit)
                ),
                key=lambda i: (i.last_seen_at, i.id),
                reverse=True,
            )[:limit]
        else:
            wanted = None if status == "all" else IncidentStatus(status)
            rows = service.list_incidents(session, status=wanted, limit=limit)
        items = [IncidentRead.model_validate(i) for i in rows]
    if as_json:
        print_json(items)
        return
    if not items:
        console.print(f"No {status if status != 'all' else ''} incidents.".replace("  ", " "))
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "SEV", "STATUS", "AGE", "SEEN", "TITLE", "LABELS"):
        table.add_column(col, overflow="fold")
    for i in items:
        status_text = i.status.value + (f" ({i.acknowledged_by})" if i.acknowledged_by else "")
        table.add_row(
            str(i.id),
            f"[{SEVERITY_STYLE[i.severity]}]{i.severity.value}[/]",
            f"[{STATUS_STYLE[i.status]}]{status_text}[/]",
            _age(i.started_at),
            f"{i.occurrences}x, {_age(i.last_seen_at)} ago",
            i.title,
            _labels(i),
        )
    console.print(table)


@incidents.command()
@click.argument("incident_id", type=int)
@config_option
@json_option
def show(config: Config, incident_id: int, as_json: bool) -> None:
    """Show one incident and its timeline."""
    with database(config) as session:
        try:
            incident = IncidentRead.model_validate(service.get(session, incident_id=incident_id))
        except service.IncidentError as exc:
            raise CommandFailed(str(exc)) from None
        timeline = [
            IncidentEventRead.model_validate(e)
            for e in service.events(session, incident_id=incident_id)
        ]
    if as_json:
        print_json({"incident": incident, "events": timeline})
        return
    i = incident
    console.print(
        f"[bold]#{i.id} {i.title}[/bold]\n"
        f"  severity [{SEVERITY_STYLE[i.severity]}]{i.severity.value}[/]   "
        f"status [{STATUS_STYLE[i.status]}]{i.status.value}[/]   source {i.source}\n"
        f"  since {i.started_at:%Y-%m-%d %H:%M:%S}Z ({_age(i.started_at)} ago), "
        f"last seen {_age(i.last_seen_at)} ago, {i.occurrences} occurrence(s)\n"
        f"  labels {_labels(i) or '-'}\n"
        f"  fingerprint {i.fingerprint}"
    )
    if i.summary:
        console.print(f"  {i.summary}")
    table = Table(box=None, header_style="bold", title="timeline", title_justify="left")
    for col in ("AT", "EVENT", "BY", "DETAIL"):
        table.add_column(col, overflow="fold")
    for e in timeline:
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}Z", e.kind, e.actor or "", e.message or "")
    console.print(table)


def _transition(config: Config, action: str, incident_id: int, as_json: bool, **kw: object) -> None:
    with database(config) as session:
        try:
            incident = getattr(service, action)(session, incident_id=incident_id, **kw)
        except service.IncidentError as exc:
            raise CommandFailed(str(exc)) from None
        read = IncidentRead.model_validate(incident)
    if as_json:
        print_json(read)
    else:
        console.print(f"#{read.id} {read.title}: [{STATUS_STYLE[read.status]}]{read.status}[/]")


@incidents.command()
@click.argument("incident_id", type=int)
@click.option("--by", default=_who, help="Who acknowledges (default: your user name).")
@config_option
@json_option
def ack(config: Config, incident_id: int, by: str, as_json: bool) -> None:
    """Acknowledge an open incident: you are on it."""
    _transition(config, "acknowledge", incident_id, as_json, by=by)


@incidents.command()
@click.argument("incident_id", type=int)
@click.option("--by", default=_who, help="Who resolves (default: your user name).")
@click.option("--note", default=None, help="What fixed it, kept on the timeline.")
@config_option
@json_option
def resolve(config: Config, incident_id: int, by: str, note: str | None, as_json: bool) -> None:
    """Resolve an incident."""
    _transition(config, "resolve", incident_id, as_json, by=by, note=note)


@incidents.command()
@click.argument("incident_id", type=int)
@click.argument("text")
@click.option("--by", default=_who, help="Author (default: your user name).")
@config_option
def note(config: Config, incident_id: int, text: str, by: str) -> None:
    """Add a note to an incident's timeline."""
    with database(config) as session:
        try:
            service.add_note(session, incident_id=incident_id, by=by, text=text)
        except service.IncidentError as exc:
            raise CommandFailed(str(exc)) from None
    console.print(f"note added to #{incident_id}")


@incidents.command("open")
@click.argument("title")
@click.option(
    "--severity",
    type=click.Choice([s.value for s in Severity]),
    default="warning",
    show_default=True,
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--summary", default=None)
@click.option("--fingerprint", default=None, help="Dedupe key (default: derived from title).")
@config_option
@json_option
def open_(
    config: Config,
    title: str,
    severity: str,
    labels: tuple[str, ...],
    summary: str | None,
    fingerprint: str | None,
    as_json: bool,
) -> None:
    """Declare an incident by hand (deduplicated like any other signal)."""
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--label {item!r}: write KEY=VALUE")
        parsed[key] = value
    fp = fingerprint or "manual:" + title.strip().lower()
    with database(config) as session:
        upsert = service.open_or_update(
            session,
            fingerprint=fp,
            title=title,
            severity=Severity(severity),
            source="manual",
            labels=parsed,
            summary=summary,
            reopen_window=timedelta(seconds=config.incidents.reopen_window),
        )
        read = IncidentRead.model_validate(upsert.incident)
    if as_json:
        print_json({"action": upsert.action, "incident": read})
    else:
        console.print(f"#{read.id} {read.title}: {upsert.action}")
