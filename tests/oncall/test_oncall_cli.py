"""`reliability oncall ...` as on-call people use it, on SQLite and PostgreSQL: who is on
call at a time and who is next, covering for someone with an override, overlapping
overrides, cancelling one, the schedule, and the input each command refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result

from reliability import db
from reliability.cli import main
from reliability.config import RotationConfig
from reliability.oncall import service

ROTATION = {
    "name": "primary",
    "users": ["U024BE7LH", {"id": "U0G9QF9C6", "name": "bob"}, "UCAROL001"],
    "handoff": "09:00",
    "time_zone": "Europe/Berlin",
    "shift": "1w",
    "start": "2026-11-30",
}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_config(tmp_path: Path, database_url: str, rotations: list[dict] | None) -> str:
    path = tmp_path / "reliability.yaml"
    data: dict[str, object] = {"database": {"url": database_url}}
    if rotations is not None:
        data["oncall"] = {"rotations": rotations}
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def config(tmp_path: Path, database_url: str, engine: sa.Engine) -> str:
    return write_config(tmp_path, database_url, [ROTATION])


def who(config: str, *args: str) -> dict[str, object]:
    result = run("oncall", "who", "--json", "-c", config, *args)
    assert result.exit_code == 0, result.output
    [answer] = json.loads(result.output)
    return answer


def test_who_answers_at_a_time_with_the_next_handoff(config: str):
    before = who(config, "--at", "2026-12-07T08:59:59+01:00")
    assert (before["user_id"], before["source"], before["override_id"]) == (
        "U024BE7LH",
        "rotation",
        None,
    )
    assert before["until"] == "2026-12-07T08:00:00+00:00"
    assert before["next"]["user_id"] == "U0G9QF9C6"
    assert before["next"]["since"] == "2026-12-07T08:00:00+00:00"
    result = run("oncall", "who", "--at", "2026-12-07T08:00Z", "-c", config)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "primary: U0G9QF9C6 (bob) is on call until Mon 2026-12-14 09:00 CET "
        "(rotation, since Mon 2026-12-07 09:00 CET)",
        "  next: UCAROL001 from Mon 2026-12-14 09:00 CET (rotation)",
    ]


def test_an_override_covers_for_its_time_and_the_rotation_takes_back_after(config: str):
    scheduled = who(config)
    reason = ("--reason", "swap [b]")
    result = run("oncall", "override", "UDAVE0001", "--for", "4h", *reason, "-c", config)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("override #1: UDAVE0001 on call in primary from ")
    now = who(config)
    assert (now["user_id"], now["source"], now["override_id"]) == ("UDAVE0001", "override", 1)
    since, until = (datetime.fromisoformat(now[k]) for k in ("since", "until"))
    assert until - since == timedelta(hours=4)
    assert now["next"]["user_id"] in {scheduled["user_id"], scheduled["next"]["user_id"]}
    later = who(config, "--at", "+4h1m")
    assert later["source"] == "rotation"

    table = run("oncall", "overrides", "-c", config).output
    assert table.splitlines()[1].split()[:4] == ["1", "active", "primary", "UDAVE0001"]
    assert table.splitlines()[1].rstrip().endswith("swap [b]")
    listed = json.loads(run("oncall", "overrides", "--json", "-c", config).output)
    assert [(o["id"], o["user_id"], o["state"], o["reason"]) for o in listed] == [
        (1, "UDAVE0001", "active", "swap [b]")
    ]

    result = run("oncall", "override", "--cancel", "1", "-c", config)
    assert result.exit_code == 0, result.output
    assert who(config)["user_id"] == scheduled["user_id"]
    assert run("oncall", "overrides", "--json", "-c", config).output.strip() == "[]"
    every = json.loads(run("oncall", "overrides", "--all", "--json", "-c", config).output)
    assert [o["state"] for o in every] == ["cancelled"]

    again = run("oncall", "override", "--cancel", "1", "-c", config)
    assert again.exit_code == 1
    assert "override 1 was cancelled at" in again.output
    assert run("oncall", "override", "--cancel", "99", "-c", config).exit_code == 1


def test_the_newest_of_overlapping_overrides_wins_and_says_so(config: str):
    first = run("oncall", "override", "UDAVE0001", "--for", "4h", "--start", "+1h", "-c", config)
    assert first.exit_code == 0, first.output
    second = run("oncall", "override", "UERIN0001", "--for", "1h", "--start", "+2h", "-c", config)
    assert second.exit_code == 0, second.output
    assert second.output.rstrip().endswith("; wins over override #1")
    assert who(config, "--at", "+1h30m")["user_id"] == "UDAVE0001"
    assert who(config, "--at", "+2h30m")["user_id"] == "UERIN0001"
    back = who(config, "--at", "+3h30m")
    assert (back["user_id"], back["override_id"]) == ("UDAVE0001", 1)

    shifts = json.loads(run("oncall", "schedule", "--days", "3", "--json", "-c", config).output)
    assert [s["user_id"] for s in shifts if s["source"] == "override"] == [
        "UDAVE0001",
        "UERIN0001",
        "UDAVE0001",
    ]
    for a, b in pairwise(shifts):
        assert a["until"] == b["since"]
    assert datetime.fromisoformat(shifts[0]["since"]) <= datetime.now(UTC)


def test_schedule_prints_the_coming_shifts(config: str):
    result = run("oncall", "schedule", "--days", "14", "-c", config)
    assert result.exit_code == 0, result.output
    title, header, *rows = result.output.splitlines()
    assert title == "primary (Europe/Berlin)"
    assert header.split() == ["FROM", "UNTIL", "ON", "CALL", "BY"]
    # The shift on now, then two more weekly ones, each from Monday 09:00 to Monday 09:00.
    assert len(rows) == 3
    assert all(row.count(" 09:00 CET") == 2 and row.rstrip().endswith("rotation") for row in rows)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["override", "ana", "--for", "4h"], "'ana': a Slack user id is U or W"),
        (["override", "UDAVE0001", "--for", "4h", "--start", "-1h"], "cannot start in the past"),
        (["override", "UDAVE0001", "--for", "40d"], "from 1 minute to 31 days"),
        (["override", "UDAVE0001", "--for", "soon"], "--for: 'soon' is not a duration"),
        (["override", "UDAVE0001"], "--for how long"),
        (["override", "--cancel", "1", "UDAVE0001"], "--cancel takes only the override's id"),
        (["who", "--at", "2026-12-07T09:00"], "has no UTC offset"),
        (["who", "--at", "tomorrow"], "write now, a time from now"),
        (["who", "--at", "9999-12-31T23:00Z"], "over 10 years from now"),
        (
            ["who", "--rotation", "secondary"],
            "no rotation is named 'secondary'; rotations: primary",
        ),
    ],
)
def test_bad_input_is_refused_with_the_fix(config: str, args: list[str], problem: str):
    result = run("oncall", *args, "-c", config)
    assert result.exit_code == 2, result.output
    assert problem in result.output
    assert run("oncall", "overrides", "--all", "--json", "-c", config).output.strip() == "[]"


def test_no_rotation_in_the_config_is_a_usage_error(tmp_path, database_url, engine):
    config = write_config(tmp_path, database_url, None)
    result = run("oncall", "who", "-c", config)
    assert result.exit_code == 2
    assert "has no on-call rotation; add an `oncall` section" in result.output


def test_an_override_names_its_rotation_when_there_are_several(tmp_path, database_url, engine):
    config = write_config(tmp_path, database_url, [ROTATION, ROTATION | {"name": "gpu"}])
    result = run("oncall", "override", "UDAVE0001", "--for", "1h", "-c", config)
    assert result.exit_code == 2
    assert "name one with --rotation (primary, gpu)" in result.output
    result = run(
        "oncall", "override", "UDAVE0001", "--for", "1h", "--rotation", "gpu", "-c", config
    )
    assert result.exit_code == 0, result.output
    answers = json.loads(run("oncall", "who", "--json", "-c", config).output)
    assert [(a["rotation"], a["source"]) for a in answers] == [
        ("primary", "rotation"),
        ("gpu", "override"),
    ]


def test_on_call_sees_a_newer_override_past_the_shift_inside_an_older_one(engine):
    """The escalation's question, from the database: an older override spans a handoff,
    a newer one starts after it; the older one's part ends where the newer one starts."""
    rotation = RotationConfig.model_validate(ROTATION)
    handoff = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    now = handoff - timedelta(hours=3)
    with db.session_factory(engine)() as s, s.begin():
        for user, start, hours in (("UDAVE0001", -2, 6), ("UERIN0001", 2, 1)):
            service.create(
                s,
                rotation="primary",
                user_id=user,
                starts_at=handoff + timedelta(hours=start),
                ends_at=handoff + timedelta(hours=start + hours),
                reason=None,
                by="test",
                now=now,
            )
    with db.session_factory(engine)() as s:
        answer = service.on_call(s, rotation=rotation, at=handoff - timedelta(hours=1))
    assert (answer.user_id, answer.source) == ("UDAVE0001", "override")
    assert answer.until == handoff + timedelta(hours=2)


def test_status_shows_who_is_on_call(tmp_path, database_url, engine):
    config = write_config(tmp_path, database_url, [ROTATION])
    data = yaml.safe_load(Path(config).read_text()) | {"http": {"listen": "127.0.0.1:9"}}
    Path(config).write_text(yaml.safe_dump(data))  # no daemon there: the database still shows
    assert run("oncall", "override", "UDAVE0001", "--for", "2h", "-c", config).exit_code == 0
    document = json.loads(run("status", "--json", "-c", config).output)
    [now] = document["on_call"]
    assert (now["rotation"], now["user_id"], now["source"]) == ("primary", "UDAVE0001", "override")
    screen = run("status", "-c", config).output
    assert "  on call (primary): UDAVE0001 until " in screen
    assert screen.split("on call (primary): ")[1].splitlines()[0].endswith("Z, override #1")
