"""Who is on call as the rotation says: handoffs at the configured local time, DST nights
keeping that wall time (a day shift then lasts 23 or 25 hours), overrides winning only
inside their window, and the newest of overlapping overrides winning."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reliability.config import RotationConfig
from reliability.oncall.rotation import handoff, on_call, shift_at, timeline

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
USERS = ["UALICE001", {"id": "UBOB00001", "name": "bob"}, "UCAROL001"]


@dataclass(frozen=True)
class Window:
    """An override as the schedule sees it (the database row has the same fields)."""

    id: int
    user_id: str
    starts_at: datetime
    until: datetime


def rotation(**fields: object) -> RotationConfig:
    values: dict[str, object] = {
        "name": "primary",
        "users": USERS,
        "handoff": "09:00",
        "time_zone": "Europe/Berlin",
        "shift": "1w",
        "start": date(2026, 11, 30),
    }
    return RotationConfig.model_validate(values | fields)


def at(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone).astimezone(UTC)


def who(r: RotationConfig, instant: datetime, overrides: list[Window] = ()) -> str:
    return on_call(r, list(overrides), instant).user_id


def test_the_weekly_shift_hands_over_at_the_local_handoff_time():
    r = rotation()
    monday = at(BERLIN, 2026, 12, 7, 9, 0)
    assert who(r, monday - timedelta(seconds=1)) == "UALICE001"
    assert who(r, monday) == "UBOB00001"
    now = on_call(r, [], monday)
    assert (now.name, now.source, now.since, now.until) == (
        "bob",
        "rotation",
        monday,
        at(BERLIN, 2026, 12, 14, 9, 0),
    )
    # Round the list, and backwards from the start date the same way.
    assert who(r, at(BERLIN, 2026, 12, 21, 10, 0)) == "UALICE001"
    assert who(r, at(BERLIN, 2026, 11, 29, 10, 0)) == "UCAROL001"


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/Berlin", date(2026, 3, 28), 23),  # spring forward on Sunday 29 March
        ("Europe/Berlin", date(2026, 10, 24), 25),  # fall back on Sunday 25 October
        ("America/New_York", date(2026, 3, 7), 23),  # spring forward on Sunday 8 March
        ("America/New_York", date(2026, 10, 31), 25),  # fall back on Sunday 1 November
    ],
)
def test_a_daily_shift_over_a_dst_night_keeps_the_handoff_wall_time(zone, day, hours):
    r = rotation(time_zone=zone, shift="1d", start=day)
    first, second = handoff(r, 0), handoff(r, 1)
    assert second - first == timedelta(hours=hours)
    for n in range(-1, 3):
        assert handoff(r, n).astimezone(ZoneInfo(zone)).strftime("%H:%M") == "09:00"
    assert who(r, second - timedelta(seconds=1)) == "UALICE001"
    assert who(r, second) == "UBOB00001"


@pytest.mark.parametrize(
    ("zone", "monday", "hours"),
    [
        ("Europe/Berlin", date(2026, 3, 23), 167),
        ("Europe/Berlin", date(2026, 10, 19), 169),
        ("America/New_York", date(2026, 3, 2), 167),
        ("America/New_York", date(2026, 10, 26), 169),
    ],
)
def test_a_weekly_shift_over_a_dst_change_ends_at_the_same_wall_time(zone, monday, hours):
    r = rotation(time_zone=zone, start=monday)
    assert handoff(r, 1) - handoff(r, 0) == timedelta(hours=hours)
    next_monday = datetime.combine(monday + timedelta(days=7), datetime.min.time())
    assert handoff(r, 1) == at(ZoneInfo(zone), *next_monday.timetuple()[:3], 9, 0)


def test_twelve_hour_shifts_over_the_new_york_spring_night():
    r = rotation(time_zone="America/New_York", shift="12h", handoff="08:00", start=date(2026, 3, 7))
    night = on_call(r, [], at(NEW_YORK, 2026, 3, 8, 3, 0))  # Saturday 20:00 to Sunday 08:00
    assert night.user_id == "UBOB00001"
    assert night.until - night.since == timedelta(hours=11)
    assert night.until == at(NEW_YORK, 2026, 3, 8, 8, 0)


def test_a_handoff_in_the_skipped_hour_happens_when_the_clock_jumps():
    r = rotation(shift="1d", handoff="02:30", start=date(2026, 3, 28))
    # 02:30 does not exist on 29 March in Berlin: the clock goes from 02:00 to 03:00.
    assert handoff(r, 1) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert handoff(r, 1).astimezone(BERLIN).strftime("%H:%M %Z") == "03:00 CEST"
    assert handoff(r, 2).astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CEST"


def test_a_handoff_in_the_repeated_hour_happens_at_its_first_occurrence():
    r = rotation(shift="1d", handoff="02:30", start=date(2026, 10, 24))
    assert handoff(r, 1) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert handoff(r, 2) - handoff(r, 1) == timedelta(hours=25)


def test_an_override_wins_within_its_window_only():
    r = rotation()
    start, end = at(BERLIN, 2026, 12, 2, 14, 0), at(BERLIN, 2026, 12, 2, 18, 0)
    cover = [Window(1, "UDAVE0001", start, end)]
    assert who(r, start - timedelta(seconds=1), cover) == "UALICE001"
    now = on_call(r, cover, start)
    assert (now.user_id, now.source, now.override_id) == ("UDAVE0001", "override", 1)
    assert (now.since, now.until) == (start, end)
    assert who(r, end - timedelta(seconds=1), cover) == "UDAVE0001"
    after = on_call(r, cover, end)
    assert (after.user_id, after.source, after.since) == ("UALICE001", "rotation", end)
    assert after.until == at(BERLIN, 2026, 12, 7, 9, 0)


def test_the_newest_of_overlapping_overrides_wins_where_they_meet():
    r = rotation()
    older = Window(1, "UDAVE0001", at(BERLIN, 2026, 12, 2, 10, 0), at(BERLIN, 2026, 12, 2, 14, 0))
    newer = Window(2, "UERIN0001", at(BERLIN, 2026, 12, 2, 12, 0), at(BERLIN, 2026, 12, 2, 13, 0))
    both = [newer, older]  # the order given does not matter; the id does
    assert who(r, at(BERLIN, 2026, 12, 2, 11, 0), both) == "UDAVE0001"
    assert who(r, at(BERLIN, 2026, 12, 2, 12, 30), both) == "UERIN0001"
    back = on_call(r, both, at(BERLIN, 2026, 12, 2, 13, 30))
    assert (back.user_id, back.since, back.until) == (
        "UDAVE0001",
        at(BERLIN, 2026, 12, 2, 13, 0),
        at(BERLIN, 2026, 12, 2, 14, 0),
    )
    # The older one's part before the newer one ends where the newer begins.
    first = on_call(r, both, at(BERLIN, 2026, 12, 2, 10, 0))
    assert first.until == at(BERLIN, 2026, 12, 2, 12, 0)


def test_an_override_over_a_handoff_holds_across_it_and_the_schedule_resumes_after():
    r = rotation()
    cover = [Window(7, "UDAVE0001", at(BERLIN, 2026, 12, 7, 8, 0), at(BERLIN, 2026, 12, 7, 10, 0))]
    pieces = timeline(r, cover, at(BERLIN, 2026, 12, 7, 0, 0), at(BERLIN, 2026, 12, 7, 12, 0))
    assert [(p.user_id, p.source, p.since.astimezone(BERLIN).hour) for p in pieces] == [
        ("UALICE001", "rotation", 0),
        ("UDAVE0001", "override", 8),
        ("UBOB00001", "rotation", 10),
    ]
    assert shift_at(r, at(BERLIN, 2026, 12, 7, 9, 30)) == 1
