"""A command loads what it needs and nothing else: `reliability --help` no database layer
or domain, `incidents list` and `status` no migration tooling, test rig, SSH, dashboards,
daemon, detection rules, runbooks, notifiers or httpx (what made every call take
seconds), and no database layer at all while the daemon answers for them (SQLAlchemy's
import alone is a third of a second). Each command runs in a fresh interpreter, as a user
runs it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from reliability import readapi
from reliability.cli import DOMAIN_COMMANDS, listed
from reliability.cli_support import from_daemon, load_config
from reliability.testing.cluster import start_member, wait_for
from reliability.testing.loopback import free_port

PROBE = """
import json, runpy, sys
sys.argv = ["reliability", *sys.argv[1:]]
try:
    runpy.run_module("reliability", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
# locust (gevent's monkey-patching) runs only in the load generator's own process.
HEAVY = (
    "alembic", "grafanalib", "paramiko", "apscheduler", "uvicorn", "slack_sdk", "locust",
    "gevent", "matplotlib",
)  # fmt: skip
# What a reading command has no use for: the config's domain checks (every custom rule,
# every automatic runbook file), the outbox, the runbook actions, an HTTP client library.
NOT_FOR_READING = (
    "reliability.detect",
    "reliability.runbooks.load",
    "reliability.runbooks.actions",
    "reliability.notify",
    "reliability.collect.api",
)


def run_probe(*args: str, config: Path) -> tuple[set[str], str]:
    """The modules the command loaded, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1])), done.stdout


def loaded(*args: str, config: Path) -> set[str]:
    return run_probe(*args, config=config)[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "reliability.yaml"
    path.write_text("http:\n  listen: 127.0.0.1:9\n")
    subprocess.run(
        [sys.executable, "-m", "reliability", "db", "upgrade", "-c", str(path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def _tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_help_loads_no_database_layer_config_or_domain(config: Path) -> None:
    modules = loaded("--help", config=config)
    assert not _tops(modules) & {"sqlalchemy", "pydantic", *HEAVY}
    assert {m for m in modules if m.startswith("reliability")} == {
        "reliability",
        "reliability.cli",
        "reliability.cli_support",
    }


@pytest.mark.parametrize("command", [["incidents", "list"], ["status"], ["capacity", "list"]])
def test_reading_commands_load_no_rig_migrations_ssh_or_daemon(
    config: Path, command: list[str]
) -> None:
    modules = loaded(*command, config=config)
    assert "sqlalchemy" in _tops(modules)  # it did run: it read the database
    assert not _tops(modules) & {*HEAVY, "httpx"}
    assert not {m for m in modules if m.startswith(NOT_FOR_READING)}
    assert not {m for m in modules if m.startswith(("reliability.testing", "reliability.demo"))}
    assert "reliability.daemon" not in modules


def test_while_the_daemon_answers_reading_commands_load_no_database_layer(
    config: Path, tmp_path: Path
):
    port = free_port()
    settings = yaml.safe_load(config.read_text()) or {}
    settings["http"] = {"listen": f"127.0.0.1:{port}"}
    config.write_text(yaml.safe_dump(settings))
    daemon = start_member(config, "imports", port, tmp_path)
    try:
        loaded_config = load_config(config)
        wait_for(
            "the daemon's read API",
            lambda: from_daemon(loaded_config, readapi.STATUS_PATH) is not None,
            60,
            [daemon],
        )
        for command in (["incidents", "list", "--json"], ["status", "--json"]):
            modules, printed = run_probe(*command, config=config)
            assert not _tops(modules) & {"sqlalchemy", "psycopg", "alembic", *HEAVY, "httpx"}
            assert "reliability.db" not in modules
            assert json.loads(printed) is not None  # it did answer
        # --direct reads the database itself, as with no daemon.
        assert "sqlalchemy" in _tops(loaded("incidents", "list", "--direct", config=config))
    finally:
        daemon.stop()


@pytest.mark.parametrize("name", sorted(DOMAIN_COMMANDS))
def test_the_listed_help_is_each_commands_own(name: str) -> None:
    module, attribute, _ = DOMAIN_COMMANDS[name]
    command: click.Command = getattr(importlib.import_module(module), attribute)
    for limit in (45, 80):
        assert listed(name).get_short_help_str(limit) == command.get_short_help_str(limit)


def test_bash_completion_offers_the_commands_a_prefix_starts() -> None:
    script = subprocess.run(
        [sys.executable, "-m", "reliability", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "_RELIABILITY_COMPLETE=bash_complete" in script
    done = subprocess.run(
        [sys.executable, "-m", "reliability"],
        env={
            **os.environ,
            "_RELIABILITY_COMPLETE": "bash_complete",
            "COMP_WORDS": "reliability in",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.split() == ["plain,incidents"]
