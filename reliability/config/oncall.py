"""The `oncall` section: rotations of Slack users, each handing over at a local time of
day in its own time zone (the oncall domain computes the shifts from it)."""

from __future__ import annotations

import difflib
import re
from datetime import date, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, BeforeValidator, Field

from reliability.config.fields import Name, Strict, matching

SLACK_USER_PATTERN = r"[UW][A-Z0-9]{2,31}"
SLACK_USER_HINT = (
    "a Slack user id is U or W and capital letters or digits, e.g. U024BE7LH "
    "(in Slack: the user's profile, More, Copy member ID)"
)
SlackUserId = Annotated[str, matching(SLACK_USER_PATTERN, SLACK_USER_HINT)]

_HANDOFF = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_SHIFT = re.compile(r"(\d+)([wdh])")
# Hours that divide the day keep every day's handoffs at the same wall times.
_DAY_HOURS = (1, 2, 3, 4, 6, 8, 12)
_SHIFT_MAX = {"w": 52, "d": 366, "h": 12}


def parse_handoff(value: Any) -> time:
    """`HH:MM` (24 hours) as a time of day."""
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 10:30 as the base-60 number 630.
        raise ValueError(
            f"{value} is a number: YAML reads an unquoted H:MM as one; quote it, "
            'e.g. handoff: "09:00"'
        )
    found = _HANDOFF.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f'{value!r}: write the handoff as HH:MM in 24 hours, e.g. "09:00"')
    return time(int(found[1]), int(found[2]))


def parse_shift(value: Any) -> timedelta:
    """A shift's length on the wall clock: `Nw`, `Nd`, or `Nh` with N dividing 24."""
    found = _SHIFT.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"{value!r}: write the shift as weeks, days or hours: 1w, 1d, 12h")
    count, unit = int(found[1]), found[2]
    if count == 0 or count > _SHIFT_MAX[unit]:
        raise ValueError(f"{value!r}: write 1 to {_SHIFT_MAX[unit]}{unit}")
    if unit == "h" and count not in _DAY_HOURS:
        raise ValueError(
            f"{value!r}: hours must divide the day (1, 2, 3, 4, 6, 8 or 12h) so handoffs "
            "fall at the same times each day; or write days (1d) or weeks (1w)"
        )
    return timedelta(**{{"w": "weeks", "d": "days", "h": "hours"}[unit]: count})


def check_time_zone(name: str) -> str:
    """An IANA time zone name that this system's zone database knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, e.g. Europe
        near = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ValueError(
            f"{name!r} is not a time zone; {hint}write an IANA name such as Europe/Berlin, "
            "America/New_York or UTC"
        ) from None
    return name


def _user_form(value: Any) -> Any:
    return {"id": value} if isinstance(value, str) else value


def _some_users(users: list[RotationUser]) -> list[RotationUser]:
    if not users:
        raise ValueError("list at least one Slack user id, e.g. users: [U024BE7LH]")
    return users


class RotationUser(Strict):
    """One person of a rotation: a Slack user id (`U024BE7LH`), or `{id: ..., name: ana}`
    to show a name beside it."""

    id: SlackUserId
    name: str | None = None


class RotationConfig(Strict):
    """Users take shifts in their order, handing over at `handoff` local time in
    `time_zone`: users[0] from `start` at `handoff`, the next one `shift` later, and so on
    round (the rotation runs backwards from `start` the same way). Shifts are counted on
    the zone's wall clock, so a DST change keeps the handoff's local time: a 1-day shift
    over the spring-forward night lasts 23 h."""

    name: Name
    users: Annotated[
        list[Annotated[RotationUser, BeforeValidator(_user_form)]],
        AfterValidator(_some_users),
    ]
    handoff: Annotated[time, BeforeValidator(parse_handoff)] = Field(
        time(9, 0), description='local time of day the shift changes, "HH:MM"'
    )
    time_zone: Annotated[str, AfterValidator(check_time_zone)] = Field(
        ..., description="IANA name, e.g. Europe/Berlin"
    )
    shift: Annotated[timedelta, BeforeValidator(parse_shift)] = Field(
        timedelta(weeks=1), description="1w, 1d, 12h"
    )
    start: date = Field(..., description="the day users[0] takes over (anchors the rotation)")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def name_of(self, user_id: str) -> str | None:
        return next((u.name for u in self.users if u.id == user_id), None)


class OnCallConfig(Strict):
    rotations: list[RotationConfig] = Field(..., min_length=1)

    def rotation(self, name: str) -> RotationConfig:
        for r in self.rotations:
            if r.name == name:
                return r
        raise KeyError(name)
