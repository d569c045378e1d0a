"""`reliability notify test`: one message to every configured channel, through the real
slack_sdk client to the Slack stand-in, and a line per channel saying what failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from reliability.cli import main
from reliability.testing.slack import SlackStandIn

TOKEN_ENV = "RELIABILITY_TEST_SLACK_TOKEN"


def notify_test(config: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["notify", "test", "-c", str(config), *extra])


def write_config(tmp_path: Path, slack: SlackStandIn, routes: list[str]) -> Path:
    section = {
        "token_env": TOKEN_ENV,
        "channel": "#alerts",
        "routes": [{"channel": channel, "severity": ["critical"]} for channel in routes],
        "base_url": slack.api_url,
    }
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump({"slack": section}))
    return path


def test_every_channel_gets_one_message_and_a_missing_one_fails_with_exit_1(
    tmp_path: Path, slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(TOKEN_ENV, slack.token)
    config = write_config(tmp_path, slack, ["#oncall", "#no-such-channel", "#alerts"])

    result = notify_test(config, "--json")

    assert result.exit_code == 1, result.output
    document = json.loads(result.output)
    assert [(c["destination"], c["ok"], c.get("error")) for c in document["channels"]] == [
        ("#alerts", True, None),
        ("#oncall", True, None),
        ("#no-such-channel", False, "channel_not_found"),
    ]
    assert "invite the bot" in document["channels"][2]["fix"]
    assert [len(slack.messages(name)) for name in ("alerts", "oncall")] == [1, 1]
    assert "reliability notify test" in slack.messages("alerts")[0].text


def test_an_archived_channel_and_a_bad_token_are_named_on_the_screen(
    tmp_path: Path, slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
):
    config = write_config(tmp_path, slack, ["#oncall"])
    slack.archive("oncall")
    monkeypatch.setenv(TOKEN_ENV, slack.token)

    archived = notify_test(config)
    monkeypatch.setenv(TOKEN_ENV, "xoxb-1-2-notthetokennotthetoken")
    refused = notify_test(config)

    assert archived.exit_code == 1
    lines = archived.output.splitlines()
    assert lines[0] == f"slack #alerts: ok ({slack.channel_id('alerts')})"
    assert lines[1].startswith("slack #oncall: FAILED is_archived: the channel is archived")
    assert lines[2] == "1 of 2 channel(s) reached"
    assert refused.exit_code == 1
    assert refused.output.count("FAILED invalid_auth: the token is wrong") == 2
    assert "notthetoken" not in refused.output


def test_all_channels_reached_is_exit_0(
    tmp_path: Path, slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(TOKEN_ENV, slack.token)
    result = notify_test(write_config(tmp_path, slack, ["#oncall"]))

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "2 of 2 channel(s) reached"


def test_no_slack_section_or_no_token_is_a_usage_error(
    tmp_path: Path, slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    without_token = notify_test(write_config(tmp_path, slack, []))
    bare = tmp_path / "bare.yaml"
    bare.write_text("{}\n")
    without_slack = notify_test(bare)

    assert without_token.exit_code == 2 and TOKEN_ENV in without_token.output
    assert without_slack.exit_code == 2 and "slack" in without_slack.output
    assert slack.calls() == []
