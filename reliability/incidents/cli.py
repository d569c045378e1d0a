"""`reliability incidents ...`: list, show, open, ack, resolve, note, silence, silences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.table import Table

from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    database,
    direct_option,
    from_daemon,
    json_option,
    print_json,
    who,
)
from reliability.config import Config
from reliability.durations import format_duration, parse_duration
from reliability.incidents.kinds import (
    LIST_DEFAULT_LIMIT,
    LIST_DEFAULT_STATUS,
    LIST_MAX_LIMIT,
    LIST_STATUSES,
    UNRESOLVED_STATUSES,
    Severity,
)
from reliability.incidents.render import (
    SEVERITY_STYLE,
    SILENCE_STYLE,
    STATUS_STYLE,
    age,
    incident_table,
    labels_text,
    span,
)
from reliability.readapi import INCIDENTS_PATH

if TYPE_CHECKING:
    from reliability.incidents.models import Silence
    from reliability.incidents.silences import Matcher

# The database layer (models, service, silences) is imported by each command that reads
# or writes: `incidents list` asks the running daemon first and then needs none of it.


@click.group()
def incidents() -> None:
    """Incidents: list, show, open, acknowledge, resolve, silence."""


@incidents.command("list")
@click.option(
    "--status",
    type=click.Choice(LIST_STATUSES),
    default=LIST_DEFAULT_STATUS,
    show_default=True,
)
@click.option(
    "--limit",
    type=click.IntRange(1, LIST_MAX_LIMIT),
    default=LIST_DEFAULT_LIMIT,
    show_default=True,
)
@direct_option
@config_option(domain_checks=False)
@json_option
def list_(config: Config, status: str, limit: int, direct: bool, as_json: bool) -> None:
    """List incidents, most recently seen first.

    Asks the running daemon (at the config's http.listen) when one answers for this
    database, else (or with --direct) reads the database: the same list either way."""
    items = None
    if not direct:
        items = from_daemon(config, INCIDENTS_PATH, {"status": status, "limit": str(limit)})
    if items is None:
        from reliability.incidents.listing import listing

        with database(config) as session:
            items = listing(session, status=status, limit=limit, now=datetime.now(UTC))
    if as_json:
        print_json(items)
        return
    if not items:
        console.print(f"No {status if status != 'all' else ''} incidents.".replace("  ", " "))
        return
    console.print(incident_table(items))


@incidents.command()
@click.argument("incident_id", type=int)
@config_option(domain_checks=False)
@json_option
def show(config: Config, incident_id: int, as_json: bool) -> None:
    """Show one incident and its timeline."""
    from reliability.incidents import service
    from reliability.incidents.models import IncidentEventRead, IncidentRead

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
        f"  since {i.started_at:%Y-%m-%d %H:%M:%S}Z ({age(i.started_at)} ago), "
        f"last seen {age(i.last_seen_at)} ago, {i.occurrences} occurrence(s)\n"
        f"  labels {labels_text(i.labels) or '-'}\n"
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
    from reliability.incidents import flows, service  # a change: pages through the outbox
    from reliability.incidents.models import IncidentRead

    with database(config) as session:
        try:
            change = getattr(flows, action)(session, incident_id=incident_id, **kw)
        except service.IncidentError as exc:
            raise CommandFailed(str(exc)) from None
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        read = IncidentRead.model_validate(change.incident)
    if as_json:
        print_json(read)
    else:
        console.print(f"#{read.id} {read.title}: [{STATUS_STYLE[read.status]}]{read.status}[/]")


@incidents.command()
@click.argument("incident_id", type=int)
@click.option("--by", default=who, help="Who acknowledges (default: your user name).")
@config_option(domain_checks=False)
@json_option
def ack(config: Config, incident_id: int, by: str, as_json: bool) -> None:
    """Acknowledge an open incident: you are on it."""
    _transition(config, "acknowledge", incident_id, as_json, by=by)


@incidents.command()
@click.argument("incident_id", type=int)
@click.option("--by", default=who, help="Who resolves (default: your user name).")
@click.option("--note", default=None, help="What fixed it, kept on the timeline.")
@config_option(domain_checks=False)
@json_option
def resolve(config: Config, incident_id: int, by: str, note: str | None, as_json: bool) -> None:
    """Resolve an incident."""
    _transition(config, "resolve", incident_id, as_json, by=by, note=note)


@incidents.command()
@click.argument("incident_id", type=int)
@click.argument("text")
@click.option("--by", default=who, help="Author (default: your user name).")
@config_option(domain_checks=False)
def note(config: Config, incident_id: int, text: str, by: str) -> None:
    """Add a note to an incident's timeline."""
    from reliability.incidents import flows, service  # a change: pages through the outbox

    with database(config) as session:
        try:
            flows.add_note(session, incident_id=incident_id, by=by, text=text)
        except service.IncidentError as exc:
            raise CommandFailed(str(exc)) from None
        except ValueError as exc:
            raise BadInput(str(exc)) from None
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
@config_option(domain_checks=False)
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
    from reliability.incidents import flows  # a change: pages through the outbox
    from reliability.incidents.models import IncidentRead

    with database(config) as session:
        try:
            upsert = flows.open_or_update(
                session,
                fingerprint=fp,
                title=title,
                severity=Severity(severity),
                source="manual",
                labels=parsed,
                summary=summary,
                reopen_window=timedelta(seconds=config.incidents.reopen_window),
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        read = IncidentRead.model_validate(upsert.incident)
    if as_json:
        print_json({"action": upsert.action, "incident": read})
    else:
        console.print(f"#{read.id} {read.title}: {upsert.action}")


def _matchers(texts: tuple[str, ...]) -> list[Matcher]:
    from reliability.incidents import silences

    try:
        return [silences.parse_matcher(text) for text in texts]
    except ValueError as exc:
        raise BadInput(f"--match {exc}") from None


def _duration(text: str) -> timedelta:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise BadInput(f"--for: {exc}") from None
    if seconds <= 0:
        raise BadInput("--for: a silence must last longer than zero")
    return timedelta(seconds=seconds)


def _silence_json(silence: Silence, now: datetime) -> dict[str, object]:
    from reliability.incidents import silences
    from reliability.incidents.models import SilenceRead

    read = SilenceRead.model_validate(silence).model_dump(mode="json")
    return read | {"state": silences.state(silence, now=now)}


def _shown(silence: Silence) -> str:
    from reliability.incidents import silences

    return " ".join(str(m) for m in silences.matchers_of(silence))


@incidents.command("silence")
@click.option(
    "--match",
    "matches",
    multiple=True,
    required=True,
    metavar="LABEL=VALUE|LABEL=~REGEX",
    help="Repeatable; an incident is silenced when every matcher holds.",
)
@click.option("--for", "for_", required=True, metavar="DURATION", help="e.g. 30m, 2h, 1d.")
@click.option("--comment", default=None, help="Why, for whoever finds the silence later.")
@click.option("--by", default=who, help="Who silences (default: your user name).")
@config_option(domain_checks=False)
@json_option
def silence(
    config: Config,
    matches: tuple[str, ...],
    for_: str,
    comment: str | None,
    by: str,
    as_json: bool,
) -> None:
    """Mute Slack for matching incidents for a while; they are still recorded.

    When it ends, incidents it held back that are still unresolved are posted.
    """
    from reliability.incidents import service, silences

    matchers, duration = _matchers(matches), _duration(for_)
    now = datetime.now(UTC)
    with database(config) as session:
        try:
            created = silences.create(
                session, matchers=matchers, duration=duration, by=by, now=now, comment=comment
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        matched = sum(
            all(m.matches(i.labels) for m in matchers)
            for status in UNRESOLVED_STATUSES
            for i in service.list_incidents(session, status=status, limit=10000)
        )
        shown = _silence_json(created, now) | {"unresolved_incidents_matched": matched}
        until = created.ends_at
    if as_json:
        print_json(shown)
        return
    console.print(
        f"silence #{shown['id']}: {' '.join(map(str, matchers))} for "
        f"{format_duration(duration.total_seconds())}, until {until:%Y-%m-%d %H:%M}Z; "
        f"matches {matched} unresolved incident(s) now"
    )


@incidents.group("silences")
def silences_group() -> None:
    """Silences: list, expire."""


@silences_group.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include expired and ended ones.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@config_option(domain_checks=False)
@json_option
def silences_list(config: Config, include_ended: bool, limit: int, as_json: bool) -> None:
    """List active silences, soonest to end first (--all: every silence, newest first)."""
    from reliability.incidents import silences

    now = datetime.now(UTC)
    with database(config) as session:
        found = silences.list_silences(session, now=now, include_ended=include_ended, limit=limit)
        items = [(_silence_json(s, now), _shown(s)) for s in found]
    if as_json:
        print_json([item for item, _ in items])
        return
    if not items:
        console.print("No silences." if include_ended else "No active silences.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "MATCHERS", "ENDS", "BY", "COMMENT"):
        table.add_column(col, overflow="fold")
    for item, matchers in items:
        state = str(item["state"])
        ended = datetime.fromisoformat(str(item["expired_at"] or item["ends_at"]))
        when = f"in {span(ended - now)}" if state == "active" else f"{span(now - ended)} ago"
        ends = f"{ended:%Y-%m-%d %H:%M}Z ({when})"
        table.add_row(
            str(item["id"]),
            f"[{SILENCE_STYLE[state]}]{state}[/]",
            matchers,
            ends,
            str(item["created_by"]),
            str(item["comment"] or ""),
        )
    console.print(table)


@silences_group.command("expire")
@click.argument("silence_id", type=int)
@config_option(domain_checks=False)
@json_option
def silences_expire(config: Config, silence_id: int, as_json: bool) -> None:
    """End a silence now; the incidents it held back that are still unresolved are posted."""
    now = datetime.now(UTC)
    from reliability.incidents import flows, silences  # a change: pages through the outbox

    with database(config) as session:
        try:
            expired, events = flows.expire_silence(session, silence_id=silence_id, now=now)
        except silences.SilenceError as exc:
            raise CommandFailed(str(exc)) from None
        shown = _silence_json(expired, now)
        matchers = _shown(expired)
        released = [e.incident_id for e in events]
    if as_json:
        print_json(shown | {"incidents_released": released})
        return
    console.print(
        f"silence #{silence_id} ({matchers}) expired; "
        f"{len(released)} held-back incident(s) will be posted"
    )
