"""Confirm steps approved as their `approval` says: by a person at the terminal, by a run
allowed to go on its own (the daemon, `--yes`), or in Slack (clicked in
tests/notify/test_slack_interactions.py); and `config check` refusing an automatic runbook
that would wait for a person."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result

from reliability import db
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config import Config, ConfigError
from reliability.runbooks import flows
from reliability.runbooks import service as runs
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunStatus

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "reliability.example.yaml"

ASKS = """
description: Ask, then say so.
steps:
  - id: approve
    action: confirm
    args:
      prompt: Go ahead?
      approval: {approval}
  - id: said
    action: notify
    args:
      text: approved
"""


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def asks(tmp_path: Path, database_url: str, engine: sa.Engine) -> Callable[[str], Config]:
    """asks(approval) -> a config whose runbook `asks` has a confirm step of that kind."""

    def make(approval: str) -> Config:
        books = tmp_path / "runbooks"
        books.mkdir(exist_ok=True)
        (books / "asks.yaml").write_text(textwrap.dedent(ASKS).lstrip().format(approval=approval))
        path = tmp_path / "reliability.yaml"
        config = {"database": {"url": database_url}, "runbooks_dir": str(books)}
        path.write_text(yaml.safe_dump(config))
        return load_config(path)

    return make


def run_as(config: Config, engine: sa.Engine, **who: object) -> tuple[RunStatus, str, list[str]]:
    """Run `asks` with an executor set up as `who` says; its status, reason and the
    recorded result of the confirm step."""
    runner = flows.executor(config, engine, **who)
    try:
        result = runner.run(load_runbooks(config)["asks"], {}, actor="test")
    finally:
        runner.close()
    with db.session_factory(engine)() as s:
        (unit, *_) = runs.units(s, run_id=result.run_id)
    return result.status, result.reason or "", [e["result"] for e in unit.log]


def test_an_auto_step_passes_in_a_daemon_run_and_the_log_says_who_approved(asks, engine):
    config = asks("auto")

    status, _, recorded = run_as(config, engine, approver="daemon")

    assert status == RunStatus.succeeded
    assert recorded == ["approved automatically by daemon"]


def test_a_terminal_step_stops_a_run_no_person_watches(asks, engine):
    config = asks("terminal")

    status, reason, recorded = run_as(config, engine, approver="daemon")

    assert status == RunStatus.failed
    assert "step approve failed: local: not approved: no person to ask" in reason
    assert recorded == ["not approved: no person to ask (approval: terminal)"]


def test_a_person_at_the_terminal_approves_an_auto_step_when_nothing_else_does(asks, engine):
    asked: list[str] = []
    config = asks("auto")

    status, _, recorded = run_as(
        config, engine, confirm=lambda prompt: asked.append(prompt) or True
    )

    assert status == RunStatus.succeeded
    assert asked == ["Go ahead?"] and recorded == ["approved at the terminal"]


def test_a_slack_step_stops_a_run_with_no_incident_thread_to_ask_in(asks, engine):
    config = asks("slack")

    status, reason, _ = run_as(config, engine, approver="daemon", confirm=lambda prompt: True)

    assert status == RunStatus.failed
    assert "not approved: no incident thread to ask in (approval: slack)" in reason


def test_yes_on_the_command_line_passes_auto_steps_and_not_terminal_ones(asks, engine):
    config = str(asks("auto").source)

    done = cli("runbook", "run", "asks", "--yes", "-c", config, "--json")

    assert done.exit_code == 0, done.output
    shown = cli("runbook", "status", "1", "-c", config)
    assert "approved automatically by --yes" in shown.output
    config = str(asks("terminal").source)
    refused = cli("runbook", "run", "asks", "--yes", "-c", config)
    assert refused.exit_code == 1
    assert "confirm step needs a person at a terminal: Go ahead?" in refused.output
    assert "step approve failed: local: not approved" in refused.output


def write_auto_config(tmp_path: Path, books: Path, auto: list[str]) -> Path:
    text = (
        EXAMPLE.read_text()
        .replace("runbooks_dir: runbooks", f"runbooks_dir: {books}")
        .replace("auto_runbooks: [node-failover]", f"auto_runbooks: [{', '.join(auto)}]")
    )
    path = tmp_path / "reliability.yaml"
    path.write_text(text)
    return path


def test_config_check_refuses_an_auto_runbook_that_waits_for_a_person_and_names_the_step(
    tmp_path: Path,
):
    books = tmp_path / "runbooks"
    books.mkdir()
    for shipped in (REPO / "runbooks").glob("*.yaml"):
        (books / shipped.name).write_text(shipped.read_text())
    (books / "asks.yaml").write_text(textwrap.dedent(ASKS).lstrip().format(approval="terminal"))
    path = write_auto_config(tmp_path, books, ["node-failover", "asks"])
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "auto_runbooks" in t)

    result = cli("config", "check", "--skip-secrets", "-c", str(path))

    assert result.exit_code == 2
    assert (
        f"{path}:{line}: services[0].auto_runbooks[1]: runbook asks cannot run on its own: "
        f"step 'approve' waits for a person ({books}/asks.yaml:7: steps[0].args.approval: "
        "a person at a terminal approves it); give it `approval: auto`"
    ) in result.output
    with pytest.raises(ConfigError, match="runbook asks cannot run on its own"):
        load_config(path)  # so the daemon does not start with it either


def test_config_check_refuses_a_rule_that_runs_a_runbook_waiting_for_a_person(tmp_path: Path):
    books = tmp_path / "runbooks"
    books.mkdir()
    (books / "asks.yaml").write_text(textwrap.dedent(ASKS).lstrip().format(approval="terminal"))
    path = write_auto_config(tmp_path, books, [])
    rule = "      group_by: [node]\n"  # in the example's one custom rule
    text = path.read_text()
    assert text.count(rule) == 1
    path.write_text(text.replace(rule, rule + "      runbook: {name: asks, auto: true}\n"))

    result = cli("config", "check", "--skip-secrets", "-c", str(path))

    assert result.exit_code == 2
    assert "rules.custom[0].runbook.auto: runbook asks cannot run on its own" in result.output
    assert "a person at a terminal approves it" in result.output


def test_the_shipped_image_rollback_may_run_on_its_own(tmp_path: Path):
    path = write_auto_config(tmp_path, REPO / "runbooks", ["node-failover", "image-rollback"])

    result = cli("config", "check", "--skip-secrets", "-c", str(path))

    assert result.exit_code == 0, result.output


def test_a_runbook_the_config_names_that_does_not_exist_is_refused_by_line(tmp_path):
    path = tmp_path / "reliability.yaml"
    path.write_text(
        "nodes:\n"
        "  - {name: gpu-1, address: 127.0.1.1, pool: blue}\n"
        "services:\n"
        "  - {name: chat, pools: [blue], active_pool: blue, auto_runbooks: [nope-failover]}\n"
        "rules:\n"
        "  custom:\n"
        "    - type: target_down\n"
        "      name: mine\n"
        "      collector: node\n"
        "      runbook: {name: also-missing}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    lines = refused.value.lines
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:4", "services[0].auto_runbooks[0]"],
        [f"{path}:10", "rules.custom[0].runbook.name"],
    ]
    assert "no runbook is named 'nope-failover'" in lines[0]
    assert (
        "known: blue-green, canary, container-restart, image-rollback, image-rollout, "
        "node-failover" in lines[0]
    )
