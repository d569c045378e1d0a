"""Whatever the rotation, the zone (DST, half-hour jumps, a skipped day) and the overrides:
at every instant exactly one person is on call, and the shifts tile time with no gap or
overlap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from reliability.config import RotationConfig
from reliability.oncall.rotation import handoff, on_call, shift_at, timeline

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # half-hour DST
    "Pacific/Apia",  # skipped 30 December 2011 whole
    "Antarctica/Troll",  # two-hour DST
    "America/Santiago",  # DST at midnight
    "Asia/Kolkata",
]
USERS = ["UA0000001", "UB0000001", "UC0000001", "UD0000001"]


@dataclass(frozen=True)
class Window:
    id: int
    user_id: str
    starts_at: datetime
    until: datetime


rotations = st.builds(
    lambda zone, shift, hh, mm, start, users: RotationConfig(
        name="r",
        users=users,
        handoff=f"{hh:02d}:{mm:02d}",
        time_zone=zone,
        shift=shift,
        start=start,
    ),
    zone=st.sampled_from(ZONES),
    shift=st.sampled_from(["1h", "2h", "8h", "12h", "1d", "3d", "1w", "2w"]),
    hh=st.integers(0, 23),
    mm=st.sampled_from([0, 15, 30, 59]),
    start=st.dates(date(2005, 1, 1), date(2030, 12, 31)),
    users=st.lists(st.sampled_from(USERS), min_size=1, max_size=4),
)
instants = st.datetimes(datetime(2008, 1, 1), datetime(2028, 1, 1), timezones=st.just(UTC))


@st.composite
def override_lists(draw: st.DrawFn, around: datetime) -> list[Window]:
    found = []
    for i in range(draw(st.integers(0, 4))):
        start = around + timedelta(minutes=draw(st.integers(-3000, 3000)))
        length = timedelta(minutes=draw(st.integers(1, 3000)))
        found.append(Window(i + 1, draw(st.sampled_from(USERS)), start, start + length))
    return found


@settings(max_examples=200, deadline=None)
@given(rotation=rotations, start=instants, days=st.integers(1, 10), data=st.data())
def test_shifts_tile_time_and_one_person_is_on_call_at_each_instant(rotation, start, days, data):
    end = start + timedelta(days=days)
    overrides = data.draw(override_lists(start + timedelta(days=days / 2)))
    pieces = timeline(rotation, overrides, start, end)
    assert pieces[0].since == start
    assert pieces[-1].until == end
    for a, b in pairwise(pieces):
        assert a.until == b.since  # no gap, no overlap
    assert all(p.since < p.until for p in pieces)
    for _ in range(5):
        last = (end - timedelta(microseconds=1)).replace(tzinfo=None)
        instant = data.draw(st.datetimes(start.replace(tzinfo=None), last)).replace(tzinfo=UTC)
        holding = [p for p in pieces if p.since <= instant < p.until]
        assert len(holding) == 1
        answer = on_call(rotation, overrides, instant)
        assert answer.since <= instant < answer.until
        assert answer.user_id == holding[0].user_id
        assert answer.source == holding[0].source


@settings(max_examples=200, deadline=None)
@given(rotation=rotations, instant=instants)
def test_handoffs_never_run_backwards(rotation, instant):
    n = shift_at(rotation, instant)
    assert handoff(rotation, n) <= instant < handoff(rotation, n + 1)
    assert handoff(rotation, n - 1) <= handoff(rotation, n)
