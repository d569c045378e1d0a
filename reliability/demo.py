"""`reliability demo`: the rig's stand-ins on loopback and the daemon watching them.

A newcomer's first run: no GPU, no root, no Slack workspace. It starts OpenAI-compatible
stand-ins for a blue pool, a green pool and a hosted API on 127.0.0.1, and the Slack Web
API stand-in, whose messages it prints to the terminal; writes a config for them (secrets
in files beside it), migrates a SQLite database and runs the daemon in the foreground.
Tell the hosted stand-in to answer 503 and, a minute later, on-call is paged.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import yaml

from reliability import db
from reliability.cli_support import console
from reliability.config_load import load
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import serve_many
from reliability.testing.slack import SlackStandIn

POOLS = ("blue", "green")
CHANNEL = "#oncall"


def write_secret(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return name


def write_config(directory: Path, urls: dict[str, str], listen: str, slack: SlackStandIn) -> Path:
    """The demo's config file: every URL on loopback, the database and secrets beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "database": {"url": "sqlite:///reliability.db"},
        "http": {
            "listen": listen,
            "webhook_token_file": write_secret(
                directory, "webhook-token", secrets.token_urlsafe(24)
            ),
        },
        "slack": {
            "token_file": write_secret(directory, "slack-token", slack.token),
            "channel": CHANNEL,
            "base_url": slack.api_url,
        },
        "endpoints": [
            *(
                {
                    "name": f"pool-{pool}",
                    "url": urls[pool],
                    "role": "local",
                    "model": "deepseek-ai/DeepSeek-V3",
                    "interval": "5s",
                    "timeout": "2s",
                    "completion_interval": "15s",
                }
                for pool in POOLS
            ),
            {
                "name": "hosted",
                "url": urls["hosted"],
                "role": "hosted",
                "model": "deepseek-ai/DeepSeek-V3",
                "interval": "5s",
                "timeout": "2s",
                "completion_interval": "15s",
            },
        ],
        "collect": {"timeout": "3s"},
    }
    path = directory / "reliability.yaml"
    path.write_text(
        "# Written by `reliability demo`; rewritten at every start.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def echo_slack(slack: SlackStandIn, stop: threading.Event) -> None:
    """Print what the stand-in receives, as on-call would see it in the channel."""
    seen = 0
    while not stop.wait(0.5):
        calls = slack.calls()
        for call in calls[seen:]:
            if call.method in ("chat.postMessage", "chat.update") and call.ok:
                where = "thread reply" if call.thread_ts else call.method
                console.print(f"[magenta]slack {CHANNEL} ({where}):[/] {call.text}")
        seen = len(calls)


def run(directory: Path, listen: str) -> int:
    """Start the stand-ins and the daemon; return the daemon's exit code on Ctrl-C."""
    from reliability import daemon

    specs = [InferenceSpec(pool=p) for p in POOLS] + [InferenceSpec(pool="hosted")]
    stop = threading.Event()
    with serve_many(specs) as group, SlackStandIn() as slack:
        threading.Thread(target=echo_slack, args=(slack, stop), daemon=True).start()
        urls = {h.spec.pool: h.url for h in group.handles}
        path = write_config(directory, urls, listen, slack)
        config = load(path)
        db.upgrade(config.database_url())
        console.print(
            f"[bold]reliability demo[/bold]: stand-ins for pools "
            f"{', '.join(f'{p} ({urls[p]})' for p in POOLS)} and a hosted API ({urls['hosted']}).\n"
            f"Metrics: curl -s http://{listen}/metrics | grep reliability_api_\n"
            f"One pass as a table: reliability daemon --once -c {path}\n"
            f"Incidents: reliability incidents list -c {path}\n"
            f'Page on-call: curl -X POST {urls["hosted"]}/_rig/mode -d \'{{"mode": '
            f'"overloaded"}}\'  (the hosted API answers 503; about a minute later the '
            f"incident opens and its Slack message prints here; mode ok resolves it)\n"
            "Ctrl-C stops everything."
        )
        try:
            return daemon.serve(daemon.build(config))
        finally:
            stop.set()
