"""Benchmark a button press on an incident's Slack message, through the real daemon.

    .venv/bin/python bench/slack_clicks.py [--presses N]

The daemon runs as in production (its own process, SQLite, the dispatcher, both
transports) against the Slack stand-in on loopback; this process opens 2 x N incidents,
waits for their messages, then presses Acknowledge on each, one after another: N over
signed HTTP to the daemon's /api/v1/slack/interactions, N over Socket Mode. A press's
latency runs from the click until the incident is acknowledged in the database and its
message reads "Acknowledged by" at the stand-in. Channel pacing is set to 100 messages/s
so the figure is the daemon's, not Slack's rate limit (1/s per channel by default).
Target: p99 < 1 s per transport.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml

from reliability import db
from reliability.incidents import flows
from reliability.incidents.models import Incident, IncidentStatus
from reliability.notify.models import NotificationRoot
from reliability.testing.loopback import free_port
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

TARGET_P99_MS = 1000.0
WAIT_S = 120.0
POLL_S = 0.002
USER = "U0BENCH"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presses", type=int, default=200, help="per transport")
    presses = parser.parse_args().presses
    with tempfile.TemporaryDirectory() as tmp, SlackStandIn() as slack:
        slack.add_user(USER, "bench")
        directory = Path(tmp)
        port = free_port()
        url = f"sqlite:///{directory / 'reliability.db'}"
        config = {
            "database": {"url": url},
            "http": {"listen": f"127.0.0.1:{port}"},
            "slack": {
                "token_env": "SLACK_BOT_TOKEN",
                "channel": "#alerts",
                "base_url": slack.api_url,
                "max_per_second": 100,
                "signing_secret_env": "SLACK_SIGNING_SECRET",
                "app_token_env": "SLACK_APP_TOKEN",
            },
        }
        path = directory / "reliability.yaml"
        path.write_text(yaml.safe_dump(config))
        env = os.environ | {
            "SLACK_BOT_TOKEN": slack.token,
            "SLACK_SIGNING_SECRET": slack.signing_secret,
            "SLACK_APP_TOKEN": slack.app_token,
        }
        reliability = [sys.executable, "-m", "reliability"]
        subprocess.run([*reliability, "db", "upgrade", "-c", str(path)], env=env, check=True)
        engine = db.make_engine(url)
        with db.session_factory(engine).begin() as s:
            ids = [
                flows.open_or_update(
                    s,
                    fingerprint=f"bench-{i}",
                    title=f"gpu-{i} is hot",
                    severity="critical",
                    source="rule",
                    labels={"node": f"gpu-{i}"},
                ).incident.id
                for i in range(2 * presses)
            ]
        daemon = subprocess.Popen(
            [*reliability, "daemon", "-c", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for("the messages", lambda: len(slack.messages("alerts")) == 2 * presses, WAIT_S)
            wait_for("Socket Mode", lambda: slack.wait_socket(1.0), WAIT_S)
            wait_for("the daemon's HTTP", lambda: _up(port), WAIT_S)
            with engine.connect() as connection:
                roots = dict(
                    connection.execute(
                        sa.select(NotificationRoot.incident_id, NotificationRoot.ref)
                    ).all()
                )
            endpoint = f"http://127.0.0.1:{port}/api/v1/slack/interactions"
            results = {}
            for transport, chosen in (("http", ids[:presses]), ("socket", ids[presses:])):
                latencies = []
                for incident_id in chosen:
                    ts = roots[incident_id]
                    started = time.perf_counter()
                    if transport == "http":
                        slack.click(endpoint, ts, "acknowledge", USER)
                    else:
                        slack.socket_click(ts, "acknowledge", USER)
                    _until_acknowledged(engine, slack, incident_id, ts)
                    latencies.append((time.perf_counter() - started) * 1000)
                results[transport] = latencies
        finally:
            daemon.terminate()
            daemon.wait(15)
            engine.dispose()
    print(f"Slack button press -> acknowledged in the database and the message edited "
          f"({presses} presses per transport, {datetime.now(UTC):%Y-%m-%d})")  # fmt: skip
    print(f"{'transport':<10} {'presses':>8} {'p50 ms':>8} {'p99 ms':>8} {'target p99':>11} ok")
    ok = True
    for transport, latencies in results.items():
        p50 = statistics.median(latencies)
        p99 = statistics.quantiles(latencies, n=100)[98]
        met = p99 < TARGET_P99_MS
        ok &= met
        print(
            f"{transport:<10} {len(latencies):>8} {p50:>8.1f} {p99:>8.1f} "
            f"{'< ' + str(int(TARGET_P99_MS)):>11} {'yes' if met else 'NO'}"
        )
    return 0 if ok else 1


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _until_acknowledged(engine: sa.Engine, slack: SlackStandIn, incident_id: int, ts: str) -> None:
    deadline = time.monotonic() + WAIT_S
    acked = False
    while time.monotonic() < deadline:
        if not acked:
            with engine.connect() as connection:
                status = connection.scalar(
                    sa.select(Incident.status).where(Incident.id == incident_id)
                )
            acked = status == IncidentStatus.acknowledged
        if acked and "Acknowledged by" in str(slack.message(ts).blocks):
            return
        time.sleep(POLL_S)
    raise SystemExit(f"incident {incident_id} not acknowledged within {WAIT_S} s")


if __name__ == "__main__":
    sys.exit(main())
