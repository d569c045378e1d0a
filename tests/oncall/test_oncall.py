"""Who is on call: the rotation's turns across a handoff and a DST change, and an override
given on the command line covering them for a while (`reliability oncall who|override`)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from pydantic import ValidationError

from reliability.cli import main
from reliability.config.models import RotationConfig
from reliability.oncall.rotation import on_call

# Weekly turns handed off Mondays 09:00 in Berlin; Europe's clocks go back on 2026-10-25.
BERLIN = RotationConfig(
    users=["U0ANA", "U0BOB", "U0CAROL"],
    start=date(2026, 10, 12),
    handoff=time(9, 0),
    time_zone="Europe/Berlin",
    length=7,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_the_turn_passes_at_the_local_handoff_time() -> None:
    assert on_call(BERLIN, at("2026-10-19T08:59+02:00"))[0] == "U0ANA"
    assert on_call(BERLIN, at("2026-10-19T09:00+02:00"))[0] == "U0BOB"


def test_across_a_dst_change_the_next_handoff_is_still_at_nine_local() -> None:
    user, since, until = on_call(BERLIN, at("2026-10-26T12:00+01:00"))  # after the change

    assert user == "U0CAROL"
    assert since.isoformat() == "2026-10-26T09:00:00+01:00"
    assert until.isoformat() == "2026-11-02T09:00:00+01:00"
    # Bob's turn spanned the change: 169 h in UTC, from 07:00Z to 08:00Z.
    _, bob_since, bob_until = on_call(BERLIN, at("2026-10-20T00:00Z"))
    assert (bob_until.astimezone(UTC) - bob_since.astimezone(UTC)).total_seconds() == 169 * 3600
    assert on_call(BERLIN, at("2026-10-26T07:30Z"))[0] == "U0BOB"  # 08:30 CET: not yet
    assert on_call(BERLIN, at("2026-10-26T08:00Z"))[0] == "U0CAROL"  # 09:00 CET


def test_turns_go_round_and_before_the_start_count_backwards() -> None:
    assert on_call(BERLIN, at("2026-11-02T10:00+01:00"))[0] == "U0ANA"
    assert on_call(BERLIN, at("2026-10-06T10:00+02:00"))[0] == "U0CAROL"


def test_an_unknown_time_zone_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Europe/Berln'"):
        RotationConfig(users=["U0ANA"], start=date(2026, 1, 5), time_zone="Europe/Berln")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def config(tmp_path: Path, database_url: str, engine: sa.Engine, monkeypatch) -> str:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-unused")
    path = tmp_path / "reliability.yaml"
    rotation = {
        "users": BERLIN.users,
        "start": "2026-10-12",
        "handoff": "09:00",
        "time_zone": "Europe/Berlin",
        "length": 7,
    }
    slack = {"token_env": "SLACK_BOT_TOKEN", "channel": "#oncall", "rotation": rotation}
    path.write_text(yaml.safe_dump({"database": {"url": database_url}, "slack": slack}))
    return str(path)


def test_who_at_a_time_names_the_rotations_turn_in_local_time(config: str) -> None:
    result = run("oncall", "who", "--at", "2026-10-26T08:00Z", "-c", config, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "user": "U0CAROL",
        "since": "2026-10-26T09:00:00+01:00",
        "until": "2026-11-02T09:00:00+01:00",
        "override": False,
    }


def test_an_override_covers_its_hours_then_the_rotation_is_back(config: str) -> None:
    made = run("oncall", "override", "U0DAVE", "--for", "4h", "--from", "2026-10-26T10:00Z",
               "-c", config)  # fmt: skip
    assert made.exit_code == 0, made.output

    def who(when: str) -> str:
        return json.loads(run("oncall", "who", "--at", when, "-c", config, "--json").output)["user"]

    assert who("2026-10-26T09:59Z") == "U0CAROL"
    assert who("2026-10-26T10:00Z") == "U0DAVE"
    assert who("2026-10-26T13:59Z") == "U0DAVE"
    assert who("2026-10-26T14:00Z") == "U0CAROL"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["ana", "--for", "4h"], "give a Slack user id"),
        (["U0DAVE", "--for", "soon"], "--for:"),
        (["U0DAVE", "--for", "4h", "--from", "tomorrow"], "--from 'tomorrow'"),
    ],
)
def test_a_bad_override_is_refused_with_exit_2(config: str, args: list[str], says: str) -> None:
    result = run("oncall", "override", *args, "-c", config)

    assert result.exit_code == 2 and says in result.output


def test_who_without_a_rotation_or_override_fails(tmp_path: Path, database_url: str, engine):
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": database_url}}))

    result = run("oncall", "who", "-c", str(path))

    assert result.exit_code == 1 and "no slack.rotation" in result.output
