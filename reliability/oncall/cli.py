"""`reliability oncall ...`: who is on call now or at a time (who), the coming shifts
(schedule), and overrides: someone covers for a while (override), listed (overrides),
cancelled (override --cancel). Times are ISO 8601 with an offset, `now`, or relative to
now (`+2h`, `-30m`); they print in the rotation's time zone. Exit 2 for bad input or a
config with no rotations, 1 for an override that cannot be cancelled."""

from __future__ import annotations

from dataclasses import asdict
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
)
from reliability.cli_support import (
    who as operator,
)
from reliability.config import Config, RotationConfig
from reliability.durations import format_duration, parse_duration
from reliability.oncall import service
from reliability.oncall.models import Override
from reliability.oncall.rotation import OnCall, timeline

MAX_SCHEDULE_DAYS = 92


@click.group()
def oncall() -> None:
    """Who is on call: the rotation, its shifts, and overrides."""


def _rotations(config: Config, name: str | None) -> list[RotationConfig]:
    if config.oncall is None:
        where = config.source or "the config"
        raise BadInput(
            f"{where} has no on-call rotation; add an `oncall` section with `rotations` "
            "(see reliability.example.yaml)"
        )
    if name is None:
        return list(config.oncall.rotations)
    try:
        return [config.oncall.rotation(name)]
    except KeyError:
        known = ", ".join(r.name for r in config.oncall.rotations)
        raise BadInput(f"--rotation: no rotation is named {name!r}; rotations: {known}") from None


def _one_rotation(config: Config, name: str | None) -> RotationConfig:
    rotations = _rotations(config, name)
    if len(rotations) > 1:
        known = ", ".join(r.name for r in rotations)
        raise BadInput(f"the config has several rotations; name one with --rotation ({known})")
    return rotations[0]


def local(at: datetime, rotation: RotationConfig | None, *, short: bool = False) -> str:
    """`at` on the rotation's wall clock (UTC for a rotation no longer in the config)."""
    zone = rotation.zone if rotation else UTC
    return f"{at.astimezone(zone):{'' if short else '%a '}%Y-%m-%d %H:%M %Z}"


def person(user_id: str, name: str | None) -> str:
    return f"{user_id} ({name})" if name else user_id


def _why(p: OnCall) -> str:
    return f"override #{p.override_id}" if p.override_id else "rotation"


rotation_option = click.option(
    "--rotation", "rotation_name", default=None, help="One rotation (default: every one)."
)


@oncall.command("who")
@click.option("--at", "at_text", default=None, metavar="TIME", help="e.g. +2h, or ISO 8601.")
@rotation_option
@config_option
@json_option
def who(config: Config, at_text: str | None, rotation_name: str | None, as_json: bool) -> None:
    """Who is on call now (or at TIME), until when, whether by an override; and who is
    next."""
    rotations = _rotations(config, rotation_name)
    at = time_option("--at", at_text, datetime.now(UTC))
    with database(config) as s:
        answers = []
        for rotation in rotations:
            held = service.on_call(s, rotation=rotation, at=at)
            answers.append((rotation, held, service.on_call(s, rotation=rotation, at=held.until)))
    if as_json:
        print_json(
            [
                asdict(held) | {"at": at, "time_zone": r.time_zone, "next": asdict(nxt)}
                for r, held, nxt in answers
            ]
        )
        return
    for r, held, nxt in answers:
        console.print(
            f"{r.name}: {person(held.user_id, held.name)} is on call until "
            f"{local(held.until, r)} ({_why(held)}, since {local(held.since, r)})",
            markup=False,
        )
        console.print(
            f"  next: {person(nxt.user_id, nxt.name)} from {local(nxt.since, r)} ({_why(nxt)})",
            markup=False,
        )


@oncall.command("schedule")
@click.option(
    "--days",
    type=click.IntRange(1, MAX_SCHEDULE_DAYS),
    default=14,
    show_default=True,
    help="How far ahead.",
)
@rotation_option
@config_option
@json_option
def schedule(config: Config, days: int, rotation_name: str | None, as_json: bool) -> None:
    """The coming shifts, overrides applied: from the one on now to the one on in DAYS."""
    rotations = _rotations(config, rotation_name)
    now = datetime.now(UTC)
    shown: list[tuple[RotationConfig, list[OnCall]]] = []
    with database(config) as s:
        for rotation in rotations:
            start = service.on_call(s, rotation=rotation, at=now).since
            end = service.on_call(s, rotation=rotation, at=now + timedelta(days=days)).until
            found = service.overlapping(s, rotation=rotation.name, start=start, end=end)
            shown.append((rotation, timeline(rotation, found, start, end)))
    if as_json:
        print_json([asdict(p) for _, pieces in shown for p in pieces])
        return
    for r, pieces in shown:
        console.print(f"{r.name} ({r.time_zone})", markup=False)
        table = Table(box=None, header_style="bold")
        for col in ("FROM", "UNTIL", "ON CALL", "BY"):
            table.add_column(col, overflow="fold")
        for p in pieces:
            table.add_row(
                local(p.since, r, short=True),
                local(p.until, r, short=True),
                person(p.user_id, p.name),
                _why(p),
            )
        console.print(table)


def _override_json(o: Override, now: datetime) -> dict[str, object]:
    keys = ("id", "rotation", "user_id", "starts_at", "ends_at", "reason", "created_by")
    return {k: getattr(o, k) for k in keys} | {
        "cancelled_at": o.cancelled_at,
        "cancelled_by": o.cancelled_by,
        "state": _state(o, now),
    }


def _state(o: Override, now: datetime) -> str:
    if o.until <= now:
        return "cancelled" if o.cancelled_at and o.cancelled_at < o.ends_at else "ended"
    return "active" if o.starts_at <= now else "upcoming"


@oncall.command("override")
@click.argument("user_id", metavar="USER", required=False)
@click.option("--for", "for_", metavar="DURATION", help="How long they cover, e.g. 4h, 2d.")
@click.option("--start", "start_text", metavar="TIME", help="From when (default now): +1h, ISO.")
@click.option("--reason", default=None, help="Why, for whoever reads the schedule.")
@click.option("--cancel", "cancel_id", type=int, metavar="ID", help="Cancel override ID instead.")
@rotation_option
@config_option
@json_option
def override(
    config: Config,
    user_id: str | None,
    for_: str | None,
    start_text: str | None,
    reason: str | None,
    cancel_id: int | None,
    rotation_name: str | None,
    as_json: bool,
) -> None:
    """Put USER (a Slack user id, U...) on call for a while instead of the rotation's
    person; the newest override wins where two overlap. `--cancel ID` ends one."""
    now = datetime.now(UTC).replace(microsecond=0)
    if cancel_id is not None:
        if user_id or for_ or start_text:
            raise BadInput("--cancel takes only the override's id: no USER, --for or --start")
        _cancel(config, cancel_id, now, as_json)
        return
    if not user_id or not for_:
        raise BadInput("name the USER who covers and --for how long, e.g. U024BE7LH --for 4h")
    rotation = _one_rotation(config, rotation_name)
    try:
        length = timedelta(seconds=parse_duration(for_))
    except ValueError as exc:
        raise BadInput(f"--for: {exc}") from None
    starts_at = time_option("--start", start_text, now)
    with database(config) as s:
        try:
            created = service.create(
                s,
                rotation=rotation.name,
                user_id=user_id,
                starts_at=starts_at,
                ends_at=starts_at + length,
                reason=reason,
                by=operator(),
                now=now,
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        over = service.overlapping(
            s, rotation=rotation.name, start=created.starts_at, end=created.ends_at
        )
        shown = _override_json(created, now)
        older = [o.id for o in over if o.id != created.id]
    if as_json:
        print_json(shown | {"overrides": older})
        return
    over_text = f"; wins over override {', '.join(f'#{i}' for i in older)}" if older else ""
    console.print(
        f"override #{shown['id']}: {person(user_id, rotation.name_of(user_id))} on call in "
        f"{rotation.name} from {local(starts_at, rotation)} until "
        f"{local(starts_at + length, rotation)} ({format_duration(length.total_seconds())})"
        f"{over_text}",
        markup=False,
    )


def _cancel(config: Config, cancel_id: int, now: datetime, as_json: bool) -> None:
    with database(config) as s:
        try:
            cancelled = service.cancel(s, override_id=cancel_id, by=operator(), now=now)
        except service.OverrideError as exc:
            raise CommandFailed(str(exc)) from None
        shown = _override_json(cancelled, now)
    if as_json:
        print_json(shown)
        return
    console.print(f"override #{cancel_id} of {shown['user_id']} cancelled", markup=False)


@oncall.command("overrides")
@click.option("--all", "include_ended", is_flag=True, help="Include ended and cancelled ones.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@rotation_option
@config_option
@json_option
def overrides(
    config: Config, include_ended: bool, limit: int, rotation_name: str | None, as_json: bool
) -> None:
    """Overrides now on or to come, soonest first (--all: every one, newest first)."""
    rotations = {r.name: r for r in _rotations(config, rotation_name)}
    now = datetime.now(UTC)
    with database(config) as s:
        found = service.listed(
            s, now=now, rotation=rotation_name, include_ended=include_ended, limit=limit
        )
        items = [(o, _override_json(o, now)) for o in found]
    if as_json:
        print_json([item for _, item in items])
        return
    if not items:
        console.print("No overrides." if include_ended else "No overrides now or to come.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "ROTATION", "ON CALL", "FROM", "UNTIL", "BY", "REASON"):
        table.add_column(col, overflow="fold")
    for o, item in items:
        r = rotations.get(o.rotation)  # None: a rotation since removed from the config
        table.add_row(
            str(o.id),
            str(item["state"]),
            o.rotation,
            person(o.user_id, r.name_of(o.user_id) if r else None),
            local(o.starts_at, r, short=True),
            local(o.until, r, short=True),
            escape(o.created_by),
            escape(o.reason or ""),  # a reason is text, never markup
        )
    console.print(table)
