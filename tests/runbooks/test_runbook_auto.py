"""Runbooks the daemon runs on its own (runbooks/flows.py AutoRunner) against the rig's
real sshd nodes, with the incident's Slack thread on the Slack stand-in through the real
slack_sdk: what reaches on-call, the timeline and the log, and what a run that cannot
start leaves behind."""

from __future__ import annotations

import logging
import shutil
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from reliability import db
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.detect.evaluator import Transition
from reliability.detect.render import RunbookRequest
from reliability.incidents import flows as incident_flows
from reliability.incidents.models import IncidentEvent
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.models import OutboxRow, OutboxStatus
from reliability.notify.slack import SlackClient, SlackNotifier
from reliability.runbooks import service as runs
from reliability.runbooks.flows import AutoRunner
from reliability.runbooks.models import RunbookRun, RunStatus
from reliability.ssh import SshPool
from reliability.testing.fleet import Fleet
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

WEBHOOK_ENV, SLACK_ENV = "RELIABILITY_TEST_WEBHOOK_TOKEN", "RELIABILITY_TEST_SLACK_TOKEN"
CONFIG_SECRET = "correct-horse-battery-staple"  # a secret of the config (webhook token)
URL_SECRET = "ghp-url-secret-4711"  # a credential the node prints in a URL
WAIT_S = 60.0  # every wait below ends by this

# The node prints what `docker pull` against a private registry might: the registry's URL
# with its token, and the config's own secret; then the step fails on that line.
LEAKY = """
description: Pull an image; the node's output carries credentials.
targets:
  one:
    node: gpu-1
steps:
  - id: pull
    action: ssh
    nodes: one
    args:
      command: cat {dir}/pull.log; cat {dir}/pull.log >&2; exit 1
"""
TOUCH = """
description: Leave a mark on gpu-1.
params:
  name:
    type: string
    pattern: "[a-z]+"
targets:
  one:
    node: gpu-1
steps:
  - id: mark
    action: ssh
    nodes: one
    args:
      command: touch {dir}/{name}.mark
      changes: true
    undo:
      command: rm -f {dir}/{name}.mark
"""


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch, slack: SlackStandIn) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, CONFIG_SECRET)
    monkeypatch.setenv(SLACK_ENV, slack.token)


@pytest.fixture
def node_dir(rig: Fleet) -> Iterator[Path]:
    """A directory the rig's login user can write: the node's disk."""
    directory = Path(tempfile.mkdtemp(dir=rig.dir))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def make_config(
    rig: Fleet, tmp_path: Path, node_dir: Path, database_url: str, engine: sa.Engine
) -> Callable[..., Config]:
    """make_config(name=yaml, ...) -> a config of the rig with those runbooks."""

    def make(**books: str) -> Config:
        directory = tmp_path / "runbooks"
        directory.mkdir(exist_ok=True)
        for name, text in books.items():
            body = textwrap.dedent(text).lstrip().replace("{dir}", str(node_dir))
            (directory / f"{name}.yaml").write_text(body)
        config = {
            "database": {"url": database_url},
            **rig.config_sections(),
            "http": {"webhook_token_env": WEBHOOK_ENV},
            "slack": {"token_env": SLACK_ENV, "channel": "#alerts"},
            "runbooks_dir": str(directory),
        }
        path = tmp_path / "reliability.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return load_config(path)

    return make


@pytest.fixture
def auto_runner() -> Iterator[Callable[[Config], AutoRunner]]:
    made: list[AutoRunner] = []

    def make(config: Config) -> AutoRunner:
        runner = AutoRunner(config, db.LazyEngine(config.database_url()), SshPool())
        runner.start()
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.stop()


def open_incident(engine: sa.Engine, name: str) -> int:
    with db.session_factory(engine).begin() as s:
        upsert = incident_flows.open_or_update(
            s, fingerprint=name, title=f"{name} fired", severity="critical", source="rule"
        )
        return upsert.incident.id


def firing(name: str, runbook: str, params: dict[str, str] | None = None) -> Transition:
    request = RunbookRequest(runbook, params or {}, auto=True)
    return Transition(
        kind="firing",
        fingerprint=name,
        rule=name,
        severity="critical",
        title=f"{name} fired",
        summary="",
        labels={},
        value=1.0,
        threshold=0.0,
        value_text="1",
        threshold_text="0",
        since=time.time(),
        at=time.time(),
        runbook=request.command,
        runbook_request=request,
    )


def ended_runs(engine: sa.Engine) -> list[RunbookRun]:
    with db.session_factory(engine)() as s:
        return [r for r in s.scalars(sa.select(RunbookRun)) if r.ended_at is not None]


def timeline(engine: sa.Engine, incident_id: int) -> list[str]:
    with db.session_factory(engine)() as s:
        events = s.scalars(sa.select(IncidentEvent).where(IncidentEvent.incident_id == incident_id))
        return [f"{e.kind} {e.message or ''} {e.data or ''}" for e in events]


def test_a_secret_printed_by_a_remote_command_reaches_neither_slack_nor_the_timeline_log_or_status(
    make_config: Callable[..., Config],
    auto_runner: Callable[[Config], AutoRunner],
    engine: sa.Engine,
    slack: SlackStandIn,
    node_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (node_dir / "pull.log").write_text(
        f"GET https://registry.example/v2/token?scope=pull&token={URL_SECRET} as {CONFIG_SECRET}\n"
    )
    config = make_config(leaky=LEAKY)
    incident_id = open_incident(engine, "leaky-pull")
    assert config.slack is not None
    dispatcher = Dispatcher(
        engine,
        SlackNotifier(SlackClient(slack.token, base_url=slack.api_url, timeout_s=2), config.slack),
        settings=DispatchSettings(backoff_cap_s=1.0),
    )
    caplog.set_level(logging.DEBUG)

    auto_runner(config).submit(firing("leaky-pull", "leaky"))
    wait_for("the automatic run to end", lambda: len(ended_runs(engine)) == 1, WAIT_S)
    dispatcher.start()
    try:

        def all_sent() -> bool:
            with db.session_factory(engine)() as s:
                return all(r.status == OutboxStatus.sent for r in s.scalars(sa.select(OutboxRow)))

        wait_for("the Slack thread to hear every note", all_sent, WAIT_S)
    finally:
        dispatcher.stop()

    (run,) = ended_runs(engine)
    assert run.status == RunStatus.failed
    sent = "\n".join(f"{c.text} {c.blocks}" for c in slack.state.calls())
    notes = "\n".join(timeline(engine, incident_id))
    status = CliRunner().invoke(main, ["runbook", "status", str(run.id), "-c", str(config.source)])
    status_json = CliRunner().invoke(
        main, ["runbook", "status", str(run.id), "--json", "-c", str(config.source)]
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for where, text in {
        "Slack": sent,
        "the timeline": notes,
        "runbook status": status.output + status_json.output,
        "the log": logged,
        "the run's reason": run.reason or "",
    }.items():
        assert URL_SECRET not in text, where
        assert CONFIG_SECRET not in text, where
    # Not vacuous: the failing line itself reached each of them, redacted (Slack escapes <>).
    assert "token=&lt;redacted&gt; as &lt;redacted&gt;" in sent
    for text in (notes, status.output, run.reason or ""):
        assert "token=<redacted> as <redacted>" in text


def test_a_bad_runbook_file_is_logged_at_start_and_the_good_ones_still_run(
    make_config: Callable[..., Config],
    auto_runner: Callable[[Config], AutoRunner],
    engine: sa.Engine,
    node_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(touch=TOUCH, broken="description: x\nsteps:\n  - id: a\n    action: nap\n")
    runbooks = Path(config.path(config.runbooks_dir))
    incident_id = open_incident(engine, "wants-broken")

    with caplog.at_level(logging.INFO, logger="reliability"):
        runner = auto_runner(config)
        runner.submit(firing("wants-broken", "broken"))
        runner.submit(firing("wants-touch", "touch", {"name": "good"}))
        wait_for("the good runbook's run", lambda: len(ended_runs(engine)) == 1, WAIT_S)

    assert (node_dir / "good.mark").exists()
    (run,) = ended_runs(engine)
    assert (run.runbook, run.status) == ("touch", RunStatus.succeeded)
    where = f"{runbooks}/broken.yaml:3: steps[0]: Input tag 'nap'"
    started = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("runbook broken is left out" in m and where in m for m in started)
    (note,) = [t for t in timeline(engine, incident_id) if "cannot run on its own" in t]
    assert "runbook broken cannot be used, its file has problems" in note and where in note
    checked = CliRunner().invoke(
        main, ["config", "check", "--skip-secrets", "-c", str(config.source)]
    )
    assert checked.exit_code == 2 and where in checked.output


def test_an_automatic_run_that_cannot_start_says_why_on_its_incident_and_in_the_log(
    make_config: Callable[..., Config],
    auto_runner: Callable[[Config], AutoRunner],
    engine: sa.Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(touch=TOUCH)
    incident_id = open_incident(engine, "bad-param")

    with caplog.at_level(logging.WARNING, logger="reliability"):
        auto_runner(config).submit(firing("bad-param", "touch", {"name": "NOT valid"}))
        wait_for(
            "the note on the incident",
            lambda: any("cannot run on its own" in t for t in timeline(engine, incident_id)),
            WAIT_S,
        )

    (note,) = [t for t in timeline(engine, incident_id) if "cannot run on its own" in t]
    assert "'NOT valid' does not match the pattern" in note
    assert any(
        "Runbook touch cannot run on its own" in r.getMessage() and "NOT valid" in r.getMessage()
        for r in caplog.records
    )
    with db.session_factory(engine)() as s:
        assert runs.history(s) == []
