"""Whose turn it is in the config's rotation (`slack.rotation`): pure, from the calendar.

Turns change at the handoff's local wall-clock time in the rotation's time zone, so a turn
that spans a DST change is an hour shorter or longer in UTC and the next handoff is still at
09:00 local. Overrides (a person covering for a while) live in the database (`service.py`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from reliability.config.models import RotationConfig


def handoff_at(rotation: RotationConfig, at: datetime) -> datetime:
    """The last handoff at or before `at` (aware), as an aware local datetime."""
    zone = ZoneInfo(rotation.time_zone)
    local = at.astimezone(zone)
    day = local.date()
    if local.time() < rotation.handoff:  # wall-clock compare: the handoff is local time
        day -= timedelta(days=1)
    turns = (day - rotation.start).days // rotation.length
    first_day = rotation.start + timedelta(days=turns * rotation.length)
    return datetime.combine(first_day, rotation.handoff, tzinfo=zone)


def on_call(rotation: RotationConfig, at: datetime) -> tuple[str, datetime, datetime]:
    """Who the rotation puts on call at `at`, from when, and until the next handoff."""
    since = handoff_at(rotation, at)
    turns = (since.date() - rotation.start).days // rotation.length
    until_day = since.date() + timedelta(days=rotation.length)
    until = datetime.combine(until_day, rotation.handoff, tzinfo=since.tzinfo)
    return rotation.users[turns % len(rotation.users)], since, until
