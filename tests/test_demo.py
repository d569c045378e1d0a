"""`reliability demo` writes a config a newcomer can read and check: it passes `config
check` with its secrets, and pages through the Slack stand-in it runs."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reliability.cli import main
from reliability.config_load import load
from reliability.demo import write_config
from reliability.testing.slack import SlackStandIn


def test_the_demo_config_passes_config_check_with_its_secrets(tmp_path: Path, slack: SlackStandIn):
    urls = {p: f"http://127.0.0.1:{port}" for p, port in (("blue", 1), ("green", 2), ("hosted", 3))}
    path = write_config(tmp_path / "demo", urls, "127.0.0.1:9464", slack)

    checked = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert checked.exit_code == 0, checked.output
    config = load(path)
    assert config.slack_token().get_secret_value() == slack.token
    assert config.webhook_token() is not None
    assert (tmp_path / "demo" / "slack-token").stat().st_mode & 0o077 == 0
    assert [e.url for e in config.endpoints] == [urls["blue"], urls["green"], urls["hosted"]]
    assert config.database_url().startswith(f"sqlite:///{tmp_path / 'demo'}")
