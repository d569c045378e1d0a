"""The real daemon takes clicks on its incident messages over both transports: signed HTTP
at its own `/api/v1/slack/interactions`, and Socket Mode to the stand-in (slack_sdk's
built-in client inside the daemon, connected after the stand-in refused its first tries);
each edits the message in place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from reliability.testing.loopback import free_port
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

ENV = {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"}
WAIT_S = 30.0


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def reliability(config: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "reliability", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout


@pytest.fixture
def daemon(tmp_path: Path, slack: SlackStandIn) -> Iterator[tuple[Path, dict[str, str], str]]:
    """(config, environment, the daemon's interactions URL), the daemon running."""
    slack.add_user("U0ANA", "ana")
    slack.add_user("U0BOB", "bob")
    port = free_port()
    config = {
        "database": {"url": f"sqlite:///{tmp_path / 'reliability.db'}"},
        "http": {"listen": f"127.0.0.1:{port}"},
        "slack": {
            "token_env": "SLACK_BOT_TOKEN",
            "channel": "#alerts",
            "base_url": slack.api_url,
            "max_per_second": 50,
            "signing_secret_env": "SLACK_SIGNING_SECRET",
            "app_token_env": "SLACK_APP_TOKEN",
            "responders": ["U0BOB"],
        },
    }
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {
        "SLACK_BOT_TOKEN": slack.token,
        "SLACK_SIGNING_SECRET": slack.signing_secret,
        "SLACK_APP_TOKEN": slack.app_token,
    }
    reliability(path, env, "db", "upgrade")
    # Socket Mode's first handshakes are refused: the daemon serves meanwhile and retries.
    slack.refuse_sockets(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        yield path, env, f"http://127.0.0.1:{port}/api/v1/slack/interactions"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    for secret in (slack.token, slack.signing_secret, slack.app_token):
        assert secret not in out
    assert "Socket Mode not connected (attempt 2: WebSocket: handshake refused)" in out


def test_the_daemon_takes_clicks_over_http_and_socket_mode(
    slack: SlackStandIn, daemon: tuple[Path, dict[str, str], str]
) -> None:
    config, env, url = daemon
    args = ["gpu-1 is hot", "--severity", "critical", "--label", "node=gpu-1", "--json"]
    opened = json.loads(reliability(config, env, "incidents", "open", *args))["incident"]
    [message] = wait_for("the page", lambda: slack.messages("alerts"), WAIT_S)
    assert slack.wait_socket(WAIT_S)

    wait_for(
        "the daemon's HTTP", lambda: _up(url.replace("/api/v1/slack/interactions", "")), WAIT_S
    )

    assert slack.click(url, message.ts, "acknowledge", "U0ANA").status == 200
    wait_for(
        "the edit", lambda: "Acknowledged by @ana" in str(slack.message(message.ts).blocks), WAIT_S
    )

    envelope = slack.socket_click(message.ts, "resolve", "U0BOB")
    assert envelope.acked_at is not None
    wait_for(
        "the resolve", lambda: "Resolved by @bob" in str(slack.message(message.ts).blocks), WAIT_S
    )
    shown = reliability(config, env, "incidents", "show", str(opened["id"]), "--json")
    assert json.loads(shown)["incident"]["status"] == "resolved"
