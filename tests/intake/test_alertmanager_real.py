"""The real Alertmanager on loopback, routing to the real daemon: an alert posted to it
becomes an incident and one Slack message (the stand-in, through slack_sdk); its
resolution resolves the incident and edits that message.

Runs on SQLite and PostgreSQL (see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from reliability import db
from reliability.incidents.models import Incident, IncidentRead, IncidentStatus, Severity
from reliability.intake.alertmanager import PATH
from reliability.testing.alertmanager import Alertmanager, binary, rfc3339
from reliability.testing.loopback import free_port
from reliability.testing.services import service_missing
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

TOKEN = "real-alertmanager-token-8d41"
# group_wait 100ms, group_interval 1s: seconds are plenty, the bound only stops a hang.
WAIT_S = 20.0
ALERT = {
    "labels": {"alertname": "GpuHot", "severity": "critical", "node": "gpu-3"},
    "annotations": {"summary": "GPU 2 at 91 °C", "description": "above slowdown for 5m"},
    "generatorURL": "http://prometheus.invalid/graph",
}


def incidents(engine: sa.Engine) -> list[IncidentRead]:
    with db.session_factory(engine)() as session:
        return [IncidentRead.model_validate(i) for i in session.scalars(sa.select(Incident))]


@pytest.fixture
def daemon_url(
    tmp_path: Path, database_url: str, engine: sa.Engine, slack: SlackStandIn
) -> Iterator[str]:
    """The daemon on a free loopback port, with Slack and the webhook token configured."""
    port = free_port()
    config = tmp_path / "reliability.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": database_url},
                "http": {"listen": f"127.0.0.1:{port}", "webhook_token_env": "AM_TOKEN"},
                "slack": {
                    "token_env": "SLACK_TOKEN",
                    "channel": "#alerts",
                    "base_url": slack.api_url,
                },
            }
        )
    )
    env = os.environ | {"AM_TOKEN": TOKEN, "SLACK_TOKEN": slack.token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("daemon ready", lambda: _ready(url, proc), WAIT_S)
        yield url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        assert TOKEN not in out and slack.token not in out


def _ready(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_an_alert_through_the_real_alertmanager_pages_then_resolves(
    engine: sa.Engine, tmp_path: Path, slack: SlackStandIn, daemon_url: str
):
    executable = binary()
    if executable is None:
        service_missing("Alertmanager (Debian package prometheus-alertmanager) not installed")
        return
    with Alertmanager(tmp_path, daemon_url + PATH, token=TOKEN, executable=executable) as am:
        am.post_alerts([ALERT])
        (message,) = wait_for("the Slack message", lambda: slack.messages("#alerts"), WAIT_S)
        [incident] = incidents(engine)
        assert incident.fingerprint.startswith("alertmanager:")
        assert (incident.title, incident.severity) == ("GpuHot: GPU 2 at 91 °C", Severity.critical)
        assert incident.labels == ALERT["labels"]
        assert "GpuHot" in message.text
        assert "gpu-3" in message.text + json.dumps(message.blocks)

        ended = datetime.now(UTC) - timedelta(seconds=1)
        am.post_alerts([ALERT | {"endsAt": rfc3339(ended)}])
        wait_for("resolved", lambda: incidents(engine)[0].status == IncidentStatus.resolved, WAIT_S)
        assert incidents(engine)[0].resolved_by == "alertmanager"
        edited = wait_for(
            "the resolve edit",
            lambda: (
                "Resolved by alertmanager"
                in json.dumps(slack.message(message.ts).blocks) + slack.message(message.ts).text
            ),
            WAIT_S,
        )
        assert edited
        assert [m.ts for m in slack.messages("#alerts")] == [message.ts]
