"""Overrides in the database, and who is on call by them (database only; the caller owns
the session and the clock).

`create` checks what an override may be: a Slack user id, at least a minute and at most
`MAX_OVERRIDE` long, starting no earlier than `now` and within `MAX_AHEAD`. Overlaps are
allowed: the newest override wins where they meet (rotation.py). `on_call` is what the
escalation asks: who is on call in a rotation at an instant, overrides applied.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.config import RotationConfig
from reliability.config.oncall import SLACK_USER_HINT, SLACK_USER_PATTERN
from reliability.oncall.models import Override
from reliability.oncall.rotation import OnCall, handoff, shift_at
from reliability.oncall.rotation import on_call as _on_call

MIN_OVERRIDE = timedelta(minutes=1)
MAX_OVERRIDE = timedelta(days=31)
MAX_AHEAD = timedelta(days=366)


class OverrideError(Exception):
    """Base of the override errors a caller can report to the user."""


class OverrideNotFound(OverrideError):
    def __init__(self, override_id: int) -> None:
        super().__init__(f"override {override_id} not found")


class OverrideEnded(OverrideError):
    """The override has already ended (run out or cancelled): nothing to cancel."""


def create(
    session: Session,
    *,
    rotation: str,
    user_id: str,
    starts_at: datetime,
    ends_at: datetime,
    reason: str | None,
    by: str,
    now: datetime,
) -> Override:
    """Record that `user_id` covers `rotation` over `[starts_at, ends_at)`; ValueError,
    saying what to change, for an override that cannot be."""
    if not re.fullmatch(SLACK_USER_PATTERN, user_id):
        raise ValueError(f"{user_id!r}: {SLACK_USER_HINT}")
    if starts_at < now:
        raise ValueError("an override cannot start in the past; leave out --start for now")
    if starts_at - now > MAX_AHEAD:
        raise ValueError("an override starts within a year; give an earlier --start")
    length = ends_at - starts_at
    if not MIN_OVERRIDE <= length <= MAX_OVERRIDE:
        raise ValueError(
            "an override lasts from 1 minute to 31 days; for longer, change the rotation"
        )
    override = Override(
        rotation=rotation,
        user_id=user_id,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason,
        created_by=by,
        created_at=now,
    )
    session.add(override)
    session.flush()
    return override


def cancel(session: Session, *, override_id: int, by: str, now: datetime) -> Override:
    """End an override now (one not started yet never applies)."""
    override = session.get(Override, override_id, with_for_update=True, populate_existing=True)
    if override is None:
        raise OverrideNotFound(override_id)
    if override.until <= now:
        how = "was cancelled" if override.cancelled_at else "ended"
        raise OverrideEnded(f"override {override_id} {how} at {override.until:%Y-%m-%d %H:%M}Z")
    override.cancelled_at, override.cancelled_by = now, by
    session.flush()
    return override


def overlapping(
    session: Session, *, rotation: str, start: datetime, end: datetime
) -> list[Override]:
    """The overrides of `rotation` that apply at some instant of `[start, end)`, oldest
    first."""
    rows = session.scalars(
        sa.select(Override)
        .where(Override.rotation == rotation, Override.starts_at < end, Override.ends_at > start)
        .order_by(Override.id)
    )
    return [o for o in rows if o.until > start and o.until > o.starts_at]


def listed(
    session: Session, *, now: datetime, rotation: str | None, include_ended: bool, limit: int
) -> list[Override]:
    """Overrides not yet ended, soonest first; with `include_ended`, all, newest first."""
    query = sa.select(Override)
    if rotation is not None:
        query = query.where(Override.rotation == rotation)
    if include_ended:
        return list(session.scalars(query.order_by(Override.id.desc()).limit(limit)))
    query = query.where(
        Override.ends_at > now,
        sa.or_(Override.cancelled_at.is_(None), Override.cancelled_at > now),
    )
    return list(session.scalars(query.order_by(Override.starts_at, Override.id).limit(limit)))


def on_call(session: Session, *, rotation: RotationConfig, at: datetime) -> OnCall:
    """Who is on call in `rotation` at `at` (aware), until when, and whether by an
    override: the answer the escalation's "mention the on-call person" step uses."""
    n = shift_at(rotation, at)
    start, end = handoff(rotation, n), handoff(rotation, n + 1)
    found = overlapping(session, rotation=rotation.name, start=start, end=end)
    covering = [o for o in found if o.starts_at <= at < o.until]
    if covering:
        # Newer overrides inside a covering one's window bound its part, even past the shift.
        start = min(start, *(o.starts_at for o in covering))
        end = max(end, *(o.until for o in covering))
        found = overlapping(session, rotation=rotation.name, start=start, end=end)
    return _on_call(rotation, found, at)
