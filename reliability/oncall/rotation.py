"""Who is on call when: a rotation's shifts in its time zone, with overrides applied.

Pure functions of the config and the overrides given (no database, no clock):

- Shift n (any integer; shift 0 starts on `start` at `handoff`) starts at the wall time
  `start + handoff + n * shift` in the rotation's zone and ends where shift n+1 starts;
  `users[n mod len(users)]` holds it. Counting on the wall clock keeps handoffs at the same
  local time across DST: a 1-day shift lasts 23 h over the spring-forward night, 25 h over
  the autumn one.
- A handoff at a wall time the clock skips happens when the clock jumps; one at a wall
  time that occurs twice happens at the first. Handoffs never run backwards, and a shift
  a jump leaves empty is no shift.
- An override puts its user on call over `[starts_at, until)` instead of the rotation's;
  where overrides overlap, the newest (highest id) wins.

So at every instant exactly one person is on call, and `timeline` tiles any span with
no gap or overlap.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from reliability.config import RotationConfig

Source = Literal["rotation", "override"]


class OverrideWindow(Protocol):
    """What an override is to the schedule (the `oncall_overrides` row is one)."""

    @property
    def id(self) -> int: ...

    @property
    def user_id(self) -> str: ...

    @property
    def starts_at(self) -> datetime: ...

    @property
    def until(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class OnCall:
    """One person on call without a change, from `since` to `until` (UTC), and why."""

    rotation: str
    user_id: str
    name: str | None
    since: datetime
    until: datetime
    source: Source
    override_id: int | None = None


def handoff(rotation: RotationConfig, n: int) -> datetime:
    """The instant (UTC) shift `n` of `rotation` starts."""
    wall = datetime.combine(rotation.start, rotation.handoff) + n * rotation.shift
    return _instant(wall, rotation.zone)


def shift_at(rotation: RotationConfig, at: datetime) -> int:
    """The shift of `rotation` that holds instant `at`."""
    # The nominal length is off by at most the DST jumps in between: a step or two fixes it.
    n = math.floor((at - handoff(rotation, 0)) / rotation.shift)
    while handoff(rotation, n) > at:
        n -= 1
    while handoff(rotation, n + 1) <= at:
        n += 1
    return n


def on_call(rotation: RotationConfig, overrides: list[OverrideWindow], at: datetime) -> OnCall:
    """Who is on call in `rotation` at `at`, until when, and whether by an override.
    Every one of `overrides` applies: the caller passes the rotation's own."""
    n = shift_at(rotation, at)
    start, end = handoff(rotation, n), handoff(rotation, n + 1)
    for o in overrides:
        if o.starts_at <= at < o.until:
            start, end = min(start, o.starts_at), max(end, o.until)
    return next(p for p in timeline(rotation, overrides, start, end) if p.since <= at < p.until)


def timeline(
    rotation: RotationConfig, overrides: list[OverrideWindow], start: datetime, end: datetime
) -> list[OnCall]:
    """Who is on call from `start` to `end`, as consecutive pieces that tile the span:
    a rotation's shift (or the part of it no override covers), or an override's part."""
    windows = [o for o in overrides if max(o.starts_at, start) < min(o.until, end)]
    first = shift_at(rotation, start)
    starts = [start]  # of shifts first, first + 1, ... within the span
    while (h := handoff(rotation, first + len(starts))) < end:
        starts.append(h)
    cuts = {*starts, end}
    cuts |= {t for o in windows for t in (o.starts_at, o.until) if start < t < end}
    pieces: list[OnCall] = []
    origins: list[tuple[Source, int]] = []
    for a, b in pairwise(sorted(cuts)):
        covering = [o for o in windows if o.starts_at <= a < o.until]
        if covering:
            o = max(covering, key=lambda w: w.id)
            origin: tuple[Source, int] = ("override", o.id)
            piece = OnCall(rotation.name, o.user_id, rotation.name_of(o.user_id), a, b, *origin)
        else:
            shift = first + bisect_right(starts, a) - 1
            user = rotation.users[shift % len(rotation.users)]
            origin = ("rotation", shift)
            piece = OnCall(rotation.name, user.id, user.name, a, b, "rotation")
        if origins and origins[-1] == origin:  # the same shift or override goes on
            pieces[-1] = replace(pieces[-1], until=b)
        else:
            origins.append(origin)
            pieces.append(piece)
    return pieces


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """Naive local `wall` in `zone` as a UTC instant: its first occurrence where it occurs
    twice, the moment the clock jumps where the clock skips it (so later wall times are
    never earlier instants)."""
    after = wall.replace(tzinfo=zone).astimezone(UTC)
    if after.astimezone(zone).replace(tzinfo=None) == wall:
        return after
    # In a gap: read with the offset after the jump it is before the jump, with the one
    # before it is after; the jump lies between. Zone transitions fall on whole seconds.
    before = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    offset = before.astimezone(zone).utcoffset()
    lo, hi = int(before.timestamp()), int(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)
