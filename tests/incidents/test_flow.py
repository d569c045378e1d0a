"""From a failure on a node to the on-call engineer's Slack message, through the real daemon.

A GPU falls off the bus on a rig node: the daemon's rule opens one incident and posts one
Slack message that names the node and the command that fixes it; an acknowledgement from
the CLI and the recovery edit that same message in place. Slack is the stand-in, driven by
the real slack_sdk client inside the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reliability.testing.fleet import Fleet
from reliability.testing.slack import PostedMessage, SlackStandIn
from reliability.testing.waiting import wait_for

RUNBOOK = "reliability runbook run node-failover --param node=gpu-2"
WAIT_S = 20.0


def content(message: PostedMessage) -> str:
    return message.text + json.dumps(message.blocks)


@pytest.fixture
def daemon_config(tmp_path: Path, rig: Fleet, slack: SlackStandIn) -> Path:
    config = {
        "database": {"url": f"sqlite:///{tmp_path / 'reliability.db'}"},
        "http": {"listen": "127.0.0.1:0"},
        "slack": {"token_env": "SLACK_BOT_TOKEN", "channel": "#alerts", "base_url": slack.api_url},
        **rig.config_sections(),
        "collect": {"node_interval": 1, "gpu_interval": 1, "timeout": 0.9},
        # The built-in rule, with a short resolve_after so the test sees the recovery.
        "rules": {
            "custom": [
                {
                    "type": "gpu_lost",
                    "name": "gpu-lost",
                    "severity": "critical",
                    "resolve_after": "1s",
                    "group_by": ["node"],
                    "runbook": {"name": "node-failover", "params": {"node": "{node}"}},
                }
            ]
        },
    }
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def running_daemon(daemon_config: Path, slack: SlackStandIn) -> Iterator[subprocess.Popen]:
    env = os.environ | {"SLACK_BOT_TOKEN": slack.token}
    reliability = [sys.executable, "-m", "reliability"]
    subprocess.run(
        [*reliability, "db", "upgrade", "-c", str(daemon_config)],
        check=True,
        capture_output=True,
        env=env,
    )
    proc = subprocess.Popen(
        [*reliability, "daemon", "-c", str(daemon_config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    yield proc
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    assert slack.token not in out


def incidents(config: Path, *args: str) -> list[dict]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reliability",
            "incidents",
            "list",
            "--json",
            "-c",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.rig
def test_a_lost_gpu_pages_once_and_the_message_follows_the_incident(
    rig: Fleet, slack: SlackStandIn, daemon_config: Path, running_daemon: subprocess.Popen
):
    rig.state.set_gpu_status("gpu-2", 3, "lost")

    (message,) = wait_for("the page", lambda: slack.messages("#alerts"), WAIT_S)
    assert "gpu-2" in message.text
    assert RUNBOOK in content(message)
    (incident,) = incidents(daemon_config)
    assert incident["status"] == "open" and incident["severity"] == "critical"
    assert incident["labels"]["node"] == "gpu-2"

    subprocess.run(
        [
            sys.executable,
            "-m",
            "reliability",
            "incidents",
            "ack",
            str(incident["id"]),
            "--by",
            "alice",
            "-c",
            str(daemon_config),
        ],
        check=True,
        capture_output=True,
    )
    wait_for(
        "the ack edit",
        lambda: "Acknowledged by alice" in content(slack.message(message.ts)),
        WAIT_S,
    )

    rig.state.set_gpu_status("gpu-2", 3, "ok")
    resolved = wait_for(
        "the resolve edit",
        lambda: "Resolved by gpu-lost" in content(m := slack.message(message.ts)) and m,
        WAIT_S,
    )
    assert RUNBOOK not in content(resolved)  # nothing left to run
    assert incidents(daemon_config, "--status", "resolved")[0]["id"] == incident["id"]
    # Still one top-level message: every change edited it in place.
    assert [m.ts for m in slack.messages("#alerts")] == [message.ts]
