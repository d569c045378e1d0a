"""On-call database work: overrides. Keyword-only, the caller's session and transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from reliability.config.models import RotationConfig
from reliability.oncall.models import OncallOverride
from reliability.oncall.rotation import on_call


@dataclass(frozen=True)
class OnCall:
    """Who is on call at a time, since and until when, and whether by an override."""

    user: str
    since: datetime
    until: datetime
    override: bool


def add_override(
    session: Session, *, user: str, starts_at: datetime, length: timedelta, by: str
) -> OncallOverride:
    """`user` is on call from `starts_at` for `length`, whatever the rotation says."""
    if length <= timedelta(0):
        raise ValueError("an override must last longer than zero")
    override = OncallOverride(
        user=user, starts_at=starts_at, ends_at=starts_at + length, created_by=by
    )
    session.add(override)
    session.flush()
    return override


def who(session: Session, *, rotation: RotationConfig | None, at: datetime) -> OnCall | None:
    """Who is on call at `at`: the newest override in force, else the rotation's turn;
    None with neither."""
    override = session.scalars(
        sa.select(OncallOverride)
        .where(OncallOverride.starts_at <= at, OncallOverride.ends_at > at)
        .order_by(OncallOverride.id.desc())
        .limit(1)
    ).first()
    if override is not None:
        return OnCall(override.user, override.starts_at, override.ends_at, override=True)
    if rotation is None:
        return None
    user, since, until = on_call(rotation, at)
    return OnCall(user, since, until, override=False)
