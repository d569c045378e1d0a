"""When every daemon is dead, Prometheus and Alertmanager page by themselves: a real
Prometheus scraping a real daemon with the exported rules, and a real Alertmanager loading
the compose stack's alertmanager.yml (its URLs and secret files pointed at the rig), whose
`slack_configs` post to the Slack stand-in's incoming webhook. The daemon is SIGKILLed;
ReliabilityDaemonDown reaches Slack without it, saying which daemon and what to do. The
Watchdog goes to the dead man's switch, never to Slack.

Only `for` and Alertmanager's grouping delays are shortened, so it takes seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reliability.config import Config
from reliability.detect import selfwatch
from reliability.detect.prometheus import export
from reliability.testing.alertmanager import Alertmanager, binary
from reliability.testing.loopback import free_port
from reliability.testing.prometheus import PrometheusServer
from reliability.testing.services import service_missing
from reliability.testing.slack import PostedMessage, SlackStandIn
from reliability.testing.waiting import wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WAIT_S = 60.0


@pytest.fixture
def dead_mans_switch() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A dead man's switch's ping URL, and the webhook bodies it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping", received
    server.shutdown()
    server.server_close()


def _alertmanager_config(tmp_path: Path, slack: SlackStandIn, ping_url: str) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml as shipped, but for the rig: its Slack webhook
    secret file holds the stand-in's URL, the dead man's switch is the test's, and the
    grouping delays are short. Its routes are left exactly as they are."""
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    (tmp_path / "slack-webhook-url").write_text(slack.webhook_url("oncall") + "\n")
    (tmp_path / "webhook-token").write_text("rig-token\n")
    for route in [config["route"], *config["route"]["routes"]]:
        for key, value in (("group_wait", "0s"), ("group_interval", "1s")):
            if key in route:
                route[key] = value
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if receiver["name"] == "deadmansswitch":
                hook["url"] = ping_url
            else:  # the daemons' intake: nothing here is routed to it
                hook["url"] = "http://127.0.0.1:9/api/v1/alertmanager"
                hook["http_config"]["authorization"]["credentials_file"] = str(
                    tmp_path / "webhook-token"
                )
        for slack_config in receiver.get("slack_configs", []):
            slack_config["api_url_file"] = str(tmp_path / "slack-webhook-url")
    return config


def _rules(tmp_path: Path, config: Config) -> Path:
    """The exported rules with the daemons' alerts firing after 3 s instead of 1 m."""
    data = yaml.safe_load(export(config).text)
    for group in data["groups"]:
        if group["name"] == selfwatch.GROUP_NAME:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "3s"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _daemon(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    config = tmp_path / "reliability.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'reliability.db'}"},
                "http": {"listen": f"127.0.0.1:{port}"},
            }
        )
    )
    migrate = [sys.executable, "-m", "reliability", "db", "upgrade", "-c", str(config)]
    subprocess.run(migrate, check=True, capture_output=True, timeout=120)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for("the daemon ready", lambda: _ready(f"http://127.0.0.1:{port}/readyz", daemon), WAIT_S)
    return daemon


def _ready(url: str, daemon: subprocess.Popen[str]) -> bool:
    assert daemon.poll() is None, "the daemon exited"
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _daemon_down(slack: SlackStandIn, since: float = 0.0) -> list[PostedMessage]:
    """ReliabilityDaemonDown's messages in #oncall (posted after `since`, a Unix time)."""
    return [
        m
        for m in slack.messages("oncall")
        if any("ReliabilityDaemonDown" in a.get("title", "") for a in m.attachments)
        and float(m.ts) > since
    ]


@pytest.mark.timeout(180)
def test_all_daemons_killed_prometheus_and_alertmanager_page_slack_directly(
    tmp_path: Path, slack: SlackStandIn, dead_mans_switch: tuple[str, list[dict[str, Any]]]
) -> None:
    executable = binary()
    if executable is None:
        service_missing("Alertmanager (Debian package prometheus-alertmanager) not installed")
        return
    ping_url, pings = dead_mans_switch
    port = free_port()
    daemon = _daemon(tmp_path, port)
    target = f"127.0.0.1:{port}"
    try:
        am_config = _alertmanager_config(tmp_path, slack, ping_url)
        (tmp_path / "am").mkdir()
        (tmp_path / "prometheus").mkdir()
        with (
            Alertmanager(tmp_path / "am", executable=executable, config=am_config) as am,
            PrometheusServer(
                tmp_path / "prometheus",
                [target],
                rules=_rules(tmp_path, Config()),
                alertmanagers=[f"127.0.0.1:{am.port}"],
            ) as prometheus,
        ):
            wait_for(
                "the daemon scraped",
                lambda: prometheus.query('up{job="reliability"} == 1'),
                WAIT_S,
                every=0.2,
            )
            wait_for("the Watchdog at the dead man's switch", lambda: pings, WAIT_S)
            assert _daemon_down(slack) == []

            killed = time.time()
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            (message, *_) = wait_for(
                "ReliabilityDaemonDown in Slack", lambda: _daemon_down(slack, killed), WAIT_S
            )
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)

    text = "\n".join(a.get("text", "") for a in message.attachments)
    assert f"reliability daemon {target} is down" in text
    assert f"Prometheus has not scraped the daemon at {target}" in text
    assert "systemctl status reliability" in text  # what to do
    # The daemon, and the one alert without `instance`: 0 of 1 expected running.
    assert message.attachments[0]["title"] == "2 firing: ReliabilityDaemonDown"
    assert "0 of 1 reliability daemons running" in text
    # Straight from Alertmanager's slack_configs, the only sender left alive.
    assert {c.method for c in slack.calls()} == {"incoming-webhook"}
    watchdog_in_slack = [
        m for m in slack.messages() if any("Watchdog" in a.get("title", "") for a in m.attachments)
    ]
    assert watchdog_in_slack == []
    assert {a["labels"]["alertname"] for body in pings for a in body["alerts"]} == {"Watchdog"}
