"""`reliability demo`: the rig's stand-ins on loopback and the daemon watching them.

A newcomer's first run: no GPU, no root, no Slack. It starts OpenAI-compatible
stand-ins for a blue pool, a green pool and a hosted API on 127.0.0.1, writes a config
for them, migrates a SQLite database and runs the daemon in the foreground.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from reliability import db
from reliability.cli_support import console
from reliability.config_load import load
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import serve_many

POOLS = ("blue", "green")


def write_config(directory: Path, urls: dict[str, str], listen: str) -> Path:
    """The demo's config file: every URL on loopback, the database beside it."""
    config = {
        "database": {"url": "sqlite:///reliability.db"},
        "http": {"listen": listen},
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
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "reliability.yaml"
    path.write_text(
        "# Written by `reliability demo`; rewritten at every start.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def run(directory: Path, listen: str) -> int:
    """Start the stand-ins and the daemon; return the daemon's exit code on Ctrl-C."""
    from reliability import daemon

    specs = [InferenceSpec(pool=p) for p in POOLS] + [InferenceSpec(pool="hosted")]
    with serve_many(specs) as group:
        urls = {h.spec.pool: h.url for h in group.handles}
        path = write_config(directory, urls, listen)
        config = load(path)
        db.upgrade(config.database_url())
        console.print(
            f"[bold]reliability demo[/bold]: stand-ins for pools "
            f"{', '.join(f'{p} ({urls[p]})' for p in POOLS)} and a hosted API ({urls['hosted']}).\n"
            f"Metrics: curl -s http://{listen}/metrics | grep reliability_api_\n"
            f"One pass as a table: reliability daemon --once -c {path}\n"
            f"Incidents: reliability incidents list -c {path}\n"
            "Ctrl-C stops everything."
        )
        return daemon.serve(daemon.build(config))
