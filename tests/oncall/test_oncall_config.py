"""The `oncall` section as a user writes it: a rotation loads, and each mistake is reported
at its file, line and field with what to write instead."""

from __future__ import annotations

import textwrap
from datetime import date, time, timedelta
from pathlib import Path

import pytest

from reliability.cli_support import load_config
from reliability.config import ConfigError

GOOD = """\
oncall:
  rotations:
    - name: primary
      users: [U024BE7LH, {id: U0G9QF9C6, name: bob}]
      handoff: "09:00"
      time_zone: Europe/Berlin
      shift: 1w
      start: 2026-11-30
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reliability.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.lines


def test_a_rotation_loads_as_written(tmp_path):
    rotation = load_config(write(tmp_path, GOOD)).oncall.rotation("primary")
    assert [u.id for u in rotation.users] == ["U024BE7LH", "U0G9QF9C6"]
    assert rotation.name_of("U0G9QF9C6") == "bob"
    assert (rotation.handoff, rotation.shift, rotation.start) == (
        time(9, 0),
        timedelta(weeks=1),
        date(2026, 11, 30),
    )
    assert str(rotation.zone) == "Europe/Berlin"


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "problem"),
    [
        (
            "time_zone: Europe/Berlin",
            "time_zone: Europe/Berln",
            6,
            "time_zone",
            "'Europe/Berln' is not a time zone; did you mean Europe/Berlin? write an IANA name",
        ),
        ('handoff: "09:00"', 'handoff: "25:00"', 5, "handoff", "write the handoff as HH:MM"),
        ('handoff: "09:00"', "handoff: 9:30", 5, "handoff", "570 is a number: YAML reads"),
        (
            "users: [U024BE7LH, {id: U0G9QF9C6, name: bob}]",
            "users: []",
            4,
            "users",
            "list at least one Slack user id",
        ),
        (
            "users: [U024BE7LH, {id: U0G9QF9C6, name: bob}]",
            "users: [ana]",
            4,
            "users[0]",
            "'ana': a Slack user id is U or W and capital letters or digits",
        ),
        ("shift: 1w", "shift: 5h", 7, "shift", "hours must divide the day"),
        ("shift: 1w", "shift: weekly", 7, "shift", "write the shift as weeks, days or hours"),
        ("start: 2026-11-30", "start: monday", 8, "start", "Input should be a valid date"),
    ],
)
def test_a_bad_rotation_names_its_field_and_the_fix(tmp_path, old, new, line, field, problem):
    path = write(tmp_path, GOOD.replace(old, new))
    [error] = errors_of(path)
    assert error.startswith(f"{path}:{line}: oncall.rotations[0].{field}: "), error
    assert problem in error


def test_a_rotation_without_its_zone_says_so(tmp_path):
    path = write(tmp_path, GOOD.replace("      time_zone: Europe/Berlin\n", ""))
    assert errors_of(path) == [
        f"{path}:3: oncall.rotations[0].time_zone: required field is missing"
    ]


def test_two_rotations_of_one_name_are_refused(tmp_path):
    second = GOOD.split("rotations:\n", 1)[1]
    path = write(tmp_path, GOOD + second)
    assert errors_of(path) == [
        f"{path}:9: oncall.rotations[1].name: rotation 'primary' is named twice"
    ]
