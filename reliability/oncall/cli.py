"""`reliability oncall ...`: who is on call (`who [--at TIME]`) and someone covering for a
while (`override USER --for 4h`). Exit 2 for a bad user id, time or duration."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import click

from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    database,
    json_option,
    print_json,
    who,
)
from reliability.config import Config
from reliability.durations import parse_duration
from reliability.oncall import service
from reliability.oncall.service import OnCall

USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")


@click.group()
def oncall() -> None:
    """Who is on call: the rotation in slack.rotation, and overrides."""


def _time(text: str | None, option: str) -> datetime:
    """Now, or an ISO 8601 time (UTC unless it names a zone or offset)."""
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{option} {text!r}: write a time like 2026-12-24T09:00 or ...Z") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _shown(config: Config, on: OnCall) -> dict[str, object]:
    zone = (
        ZoneInfo(config.slack.rotation.time_zone) if config.slack and config.slack.rotation else UTC
    )
    return {
        "user": on.user,
        "since": on.since.astimezone(zone).isoformat(),
        "until": on.until.astimezone(zone).isoformat(),
        "override": on.override,
    }


@oncall.command("who")
@click.option("--at", "at_text", metavar="TIME", help="When (ISO 8601; UTC without a zone).")
@config_option
@json_option
def who_(config: Config, at_text: str | None, as_json: bool) -> None:
    """Who is on call now, or at TIME: an override in force, else the rotation's turn."""
    at = _time(at_text, "--at")
    rotation = config.slack.rotation if config.slack else None
    with database(config) as s:
        on = service.who(s, rotation=rotation, at=at)
    if on is None:
        raise CommandFailed("nobody: no slack.rotation in the config and no override in force")
    shown = _shown(config, on)
    if as_json:
        print_json(shown)
        return
    how = "override" if on.override else "rotation"
    console.print(f"{on.user} is on call ({how}) from {shown['since']} until {shown['until']}")


@oncall.command()
@click.argument("user", metavar="USER")
@click.option("--for", "length", required=True, help="How long, e.g. 4h or 1h30m.")
@click.option("--from", "start", metavar="TIME", help="When it starts (default: now).")
@config_option
@json_option
def override(config: Config, user: str, length: str, start: str | None, as_json: bool) -> None:
    """USER (a Slack user id, U...) is on call for a while, whatever the rotation says."""
    if not USER_ID.fullmatch(user):
        raise BadInput(f"USER {user!r}: give a Slack user id (U... or W...), not a name")
    try:
        seconds = parse_duration(length)
    except ValueError as exc:
        raise BadInput(f"--for: {exc}") from None
    if seconds <= 0:
        raise BadInput("--for: an override must last longer than zero")
    starts_at = _time(start, "--from")
    with database(config) as s:
        made = service.add_override(
            s, user=user, starts_at=starts_at, length=timedelta(seconds=seconds), by=who()
        )
        on = OnCall(made.user, made.starts_at, made.ends_at, override=True)
    shown = _shown(config, on)
    if as_json:
        print_json(shown)
        return
    console.print(f"{user} is on call from {shown['since']} until {shown['until']}")
