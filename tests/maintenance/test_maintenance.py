"""Maintenance windows as on-call people use them, on SQLite and PostgreSQL: what a scope
covers, the input `reliability maintenance` refuses, a window holding the escalation and
starting it over when it ends, overlapping windows, a window scheduled for later, and the
automatic runbooks it keeps off its targets while a person may still run one."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from reliability import db
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config import Config, OnCallConfig, SlackConfig
from reliability.detect.evaluator import Transition
from reliability.detect.render import RunbookRequest
from reliability.incidents import flows as incident_flows
from reliability.incidents import service as incidents
from reliability.incidents.models import IncidentEvent
from reliability.maintenance import flows, service
from reliability.notify import service as outbox_service
from reliability.notify.models import OutboxRow
from reliability.oncall.flows import escalate
from reliability.runbooks.flows import AutoRunner
from reliability.runbooks.models import RunbookRun
from reliability.ssh import SshPool
from reliability.testing.waiting import wait_for

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
WAIT_S = 30.0
FLEET = {
    "nodes": [
        {"name": "gpu-1", "address": "127.0.9.1", "pool": "blue"},
        {"name": "gpu-2", "address": "127.0.9.2", "pool": "blue"},
        {"name": "gpu-3", "address": "127.0.9.3", "pool": "green"},
        {"name": "spare-1", "address": "127.0.9.4", "role": "standby"},
    ],
    "services": [{"name": "chat", "pools": ["blue", "green"], "active_pool": "blue"}],
    "endpoints": [
        {"name": "chat-gpu-1", "url": "http://127.0.9.1:8000", "service": "chat", "kind": "http"}
    ],
}
SLACK = SlackConfig(
    token_env="SLACK_BOT_TOKEN",
    channel="#alerts",
    escalation={
        "critical": {"steps": [{"after": 0}, {"after": "5m", "mention": "oncall"}]}
    },
)  # fmt: skip
ONCALL = OnCallConfig(
    rotations=[
        {"name": "primary", "users": ["U0ANA"], "start": date(2026, 12, 7), "shift": "1d",
         "handoff": "09:00", "time_zone": "UTC"}
    ]
)  # fmt: skip
# Says a word in the thread (no SSH), and a change on gpu-1 over SSH (only planned here).
SAY = """
description: Say a word in the incident's thread.
steps:
  - id: say
    action: notify
    args:
      text: the word is hello
"""
TOUCH = """
description: Leave a mark on gpu-1.
targets:
  one:
    node: gpu-1
steps:
  - id: mark
    action: ssh
    nodes: one
    args:
      command: touch /tmp/mark
      changes: true
    undo:
      command: rm -f /tmp/mark
"""


@pytest.fixture
def config_path(tmp_path: Path, database_url: str, engine: sa.Engine, monkeypatch) -> Path:
    books = tmp_path / "runbooks"
    books.mkdir()
    (books / "say.yaml").write_text(textwrap.dedent(SAY).lstrip())
    (books / "touch.yaml").write_text(textwrap.dedent(TOUCH).lstrip())
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-unused")
    path = tmp_path / "reliability.yaml"
    data = {
        "database": {"url": database_url},
        **FLEET,
        "slack": {"token_env": "SLACK_BOT_TOKEN", "channel": "#alerts"},
        "runbooks_dir": str(books),
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


def run(config_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["maintenance", *args, "-c", str(config_path)])


def window(session: Session, config: Config, scope: str, **times: datetime) -> int:
    """A window over `scope` from T0 (or `starts_at`) for an hour (or to `ends_at`)."""
    starts_at = times.get("starts_at", T0)
    made = flows.start(
        session,
        config=config,
        scope=scope,
        starts_at=starts_at,
        ends_at=times.get("ends_at", starts_at + HOUR),
        reason="reseating GPUs",
        by="ana",
        now=T0,
    )
    session.commit()
    return made.id


def held_back(session: Session, name: str, window_id: int | None, **labels: str) -> int:
    """An incident opened at T0 whose notifications the window held (as the dispatcher
    marks them; None: nothing held them); its id."""
    upsert = incident_flows.open_or_update(
        session, fingerprint=name, title=name, severity="critical", source="rule",
        labels=labels, at=T0,
    )  # fmt: skip
    queued = session.scalars(
        sa.select(OutboxRow.id).where(OutboxRow.incident_id == upsert.incident.id)
    ).all()
    for row_id in queued if window_id is not None else ():
        outbox_service.mark_skipped(
            session.connection(), row_id=row_id, reason="held", now=T0, maintenance_id=window_id
        )
    session.commit()
    return upsert.incident.id


# -- what a scope covers, and the input refused ----------------------------------------------


def test_each_scope_covers_its_targets_as_the_fleet_has_them(session: Session, config: Config):
    def covers(scope: str) -> dict[str, list[str]]:
        return flows.resolve(session, config, scope).targets

    assert covers("node:gpu-1") == {"node": ["gpu-1"]}
    assert covers("pool:blue") == {"node": ["gpu-1", "gpu-2"]}
    assert covers("service:chat") == {
        "service": ["chat"],
        "node": ["gpu-1", "gpu-2", "gpu-3"],
        "endpoint": ["chat-gpu-1"],
    }
    assert covers("fleet") == {}
    fleet_window = service.ActiveWindow(1, "fleet", {}, T0 + HOUR, "move")
    assert fleet_window.covers({}) and fleet_window.covers({"endpoint": "hosted"})


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["node:gpu-9", "--for", "2h"], "node 'gpu-9' is not in"),
        (["pool:purple", "--for", "2h"], "its pools: blue, green"),
        (["gpu-1", "--for", "2h"], "did you mean node:gpu-1?"),
        (["node:gpu-1"], "say how long with --for DURATION"),
        (["node:gpu-1", "--for", "2h", "--until", "+3h"], "say how long with --for"),
        (["node:gpu-1", "--for", "8d"], "at most 7 days (longer ones are refused, not shortened)"),
        (["node:gpu-1", "--at", "+2h", "--until", "+1h"], "before it starts"),
        (["node:gpu-1", "--at", "-1h", "--for", "2h"], "cannot start in the past"),
        (["node:gpu-1", "--at", "2026-12-07T10:00", "--for", "2h"], "has no UTC offset"),
        (["node:gpu-1", "--for", "soon"], "--for: 'soon' is not a duration"),
    ],
)
def test_bad_input_exits_2_naming_the_fix_and_records_nothing(
    config_path: Path, session: Session, args: list[str], says: str
):
    result = run(config_path, "start", *args, "--reason", "work")

    assert result.exit_code == 2, result.output
    assert says in result.output
    assert service.listed(session, now=T0, include_ended=True) == []


def test_start_list_and_end_through_the_cli(config_path: Path):
    started = run(config_path, "start", "pool:blue", "--for", "2h", "--reason", "kernel", "--json")
    later = run(config_path, "start", "node:gpu-3", "--at", "+1h", "--for", "30m", "--reason",
                "fans", "--json")  # fmt: skip
    assert started.exit_code == 0 and later.exit_code == 0, started.output + later.output
    now, upcoming = json.loads(started.output), json.loads(later.output)
    assert (now["scope"], now["state"], now["targets"]) == (
        "pool:blue", "active", {"node": ["gpu-1", "gpu-2"]}
    )  # fmt: skip
    assert upcoming["state"] == "upcoming"

    listed = json.loads(run(config_path, "list", "--json").output)
    shown = [(w["id"], w["state"]) for w in listed]
    assert shown == [(now["id"], "active"), (upcoming["id"], "upcoming")]

    assert run(config_path, "end", str(upcoming["id"])).output.startswith(
        f"maintenance window #{upcoming['id']} (node:gpu-3) cancelled"
    )
    ended = json.loads(run(config_path, "end", str(now["id"]), "--json").output)
    assert (ended["state"], ended["incidents_released"]) == ("ended", [])
    again = run(config_path, "end", str(now["id"]))
    assert again.exit_code == 1 and "already ended" in again.output
    assert run(config_path, "end", "4242").exit_code == 1
    assert "No maintenance now or to come." in run(config_path, "list").output


def test_incidents_list_says_which_window_holds_an_incident(config_path: Path):
    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "-c", str(config_path), "--direct"])

    held = CliRunner().invoke(
        main, ["incidents", "open", "gpu-1 hot", "--label", "node=gpu-1", "-c", str(config_path)]
    )
    free = CliRunner().invoke(
        main, ["incidents", "open", "gpu-3 hot", "--label", "node=gpu-3", "-c", str(config_path)]
    )
    assert held.exit_code == 0 and free.exit_code == 0, held.output + free.output
    window = json.loads(run(config_path, "start", "node:gpu-1", "--for", "1h", "--reason",
                            "reseat", "--json").output)  # fmt: skip

    rows = json.loads(cli("incidents", "list", "--json").output)
    assert {i["title"]: i["in_maintenance"] for i in rows} == {
        "gpu-1 hot": window["id"], "gpu-3 hot": None
    }  # fmt: skip
    assert f"in maintenance #{window['id']}" in cli("incidents", "list").output


# -- what a window holds, and when ----------------------------------------------------------


def escalated(session: Session, incident_id: int) -> list[tuple[int, str | None]]:
    return [
        (e.data["step"], e.data["mention"])
        for e in incidents.events(session, incident_id=incident_id)
        if e.kind == "escalated"
    ]


def tick(session: Session, at: datetime) -> list[IncidentEvent]:
    """The daemon's timers at `at`: releases, then the escalation."""
    released = incident_flows.tick(session, now=at, ack_timeout=timedelta(0))
    escalate(session, slack=SLACK, oncall=ONCALL, now=at)
    session.commit()
    return released


def test_a_window_holds_the_escalation_and_its_end_starts_it_over_once(
    session: Session, config: Config
):
    held_window = window(session, config, "node:gpu-1")
    incident_id = held_back(session, "gpu-1-hot", held_window, node="gpu-1")
    elsewhere = held_back(session, "gpu-3-hot", None, node="gpu-3")  # no window covers gpu-3

    for minutes in (0, 5, 30, 59):
        assert tick(session, T0 + timedelta(minutes=minutes)) == []
    assert escalated(session, incident_id) == []
    assert escalated(session, elsewhere) == [(0, None), (1, "U0ANA")]

    [released] = tick(session, T0 + HOUR)
    assert (released.incident_id, released.kind, released.data) == (
        incident_id, "maintenance_ended", {"maintenance_id": held_window}
    )  # fmt: skip
    assert tick(session, T0 + HOUR + timedelta(minutes=1)) == []  # once
    tick(session, T0 + HOUR + timedelta(minutes=5))
    # From the window's end, as for a new incident: not straight to the latest step.
    assert escalated(session, incident_id) == [(0, None), (1, "U0ANA")]


def test_overlapping_windows_hold_until_the_last_one_covering_ends(
    session: Session, config: Config
):
    window(session, config, "node:gpu-1")
    pool = window(session, config, "pool:blue", ends_at=T0 + 2 * HOUR)
    incident_id = held_back(session, "gpu-1-hot", pool, node="gpu-1")

    in_force = service.active(session, now=T0 + timedelta(minutes=30))
    assert service.covering(in_force, {"node": "gpu-1"}).id == pool  # the longer one
    assert tick(session, T0 + HOUR) == []  # the pool's window still covers gpu-1
    [released] = tick(session, T0 + 2 * HOUR)
    assert released.incident_id == incident_id
    assert tick(session, T0 + 2 * HOUR) == []


def test_a_window_scheduled_later_holds_nothing_until_it_starts(session: Session, config: Config):
    later = window(session, config, "node:gpu-1", starts_at=T0 + HOUR)
    incident_id = held_back(session, "gpu-1-hot", None, node="gpu-1")

    assert service.active(session, now=T0 + timedelta(minutes=59)) == []
    tick(session, T0 + timedelta(minutes=5))
    assert escalated(session, incident_id) == [(1, "U0ANA")]  # the latest step due
    assert [w.id for w in service.active(session, now=T0 + HOUR)] == [later]


def test_ending_a_window_early_releases_what_it_held(session: Session, config: Config):
    held_window = window(session, config, "service:chat")
    incident_id = held_back(session, "chat-gpu-1-down", held_window, endpoint="chat-gpu-1")

    ended, released = flows.end(
        session, window_id=held_window, by="ana", now=T0 + timedelta(minutes=10)
    )
    session.commit()

    assert service.state(ended, now=T0 + HOUR) == "ended"
    assert [(e.incident_id, e.kind) for e in released] == [(incident_id, "maintenance_ended")]


# -- automatic runbooks ---------------------------------------------------------------------


@pytest.fixture
def runner(config: Config, database_url: str) -> Iterator[AutoRunner]:
    auto = AutoRunner(config, db.LazyEngine(database_url), SshPool())
    auto.start()
    yield auto
    auto.stop()


def firing(name: str, runbook: str, **labels: str) -> Transition:
    request = RunbookRequest(runbook, {}, auto=True)
    return Transition(
        kind="firing", fingerprint=name, rule=name, severity="critical", title=name,
        summary="", labels=labels, value=1.0, threshold=0.0, value_text="1",
        threshold_text="0", since=time.time(), at=time.time(), runbook=request.command,
        runbook_request=request,
    )  # fmt: skip


def opened(engine: sa.Engine, name: str, **labels: str) -> int:
    with db.session_factory(engine).begin() as s:
        upsert = incident_flows.open_or_update(
            s, fingerprint=name, title=name, severity="critical", source="rule", labels=labels
        )
        return upsert.incident.id


def notes(engine: sa.Engine, incident_id: int) -> list[str]:
    with db.session_factory(engine)() as s:
        return [e.message or "" for e in incidents.events(s, incident_id=incident_id)]


def ended_runs(engine: sa.Engine) -> list[RunbookRun]:
    with db.session_factory(engine)() as s:
        return [r for r in s.scalars(sa.select(RunbookRun)) if r.ended_at is not None]


def now_window(engine: sa.Engine, config: Config, scope: str) -> int:
    now = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        return flows.start(
            s, config=config, scope=scope, starts_at=now, ends_at=now + HOUR,
            reason="reseating GPUs", by="ana", now=now,
        ).id  # fmt: skip


def test_no_automatic_runbook_starts_against_a_target_in_maintenance(
    engine: sa.Engine, config: Config, runner: AutoRunner
):
    held_window = now_window(engine, config, "node:gpu-1")
    on_target = opened(engine, "gpu-2-xid")  # its runbook changes gpu-1
    on_incident = opened(engine, "gpu-1-hot", node="gpu-1")

    runner.submit(firing("gpu-2-xid", "touch", node="gpu-2"))
    runner.submit(firing("gpu-1-hot", "say", node="gpu-1"))

    for incident_id, what in ((on_target, "gpu-1"), (on_incident, "its incident")):
        said = wait_for("why it did not run", lambda i=incident_id: notes(engine, i)[1:], WAIT_S)
        assert f"not run on its own: {what} is in maintenance window {held_window}" in said[0]
        assert "Run it by hand if it is needed now: `reliability runbook run" in said[0]
    assert ended_runs(engine) == []


def test_a_person_may_still_run_one_and_is_warned(
    engine: sa.Engine, config: Config, runner: AutoRunner
):
    held_window = now_window(engine, config, "pool:blue")
    incident_id = opened(engine, "gpu-1-hot", node="gpu-1")

    runner.run_for("@bob", incident_id, RunbookRequest("say", {}, auto=False))

    [run] = wait_for("the run", lambda: ended_runs(engine), WAIT_S)
    assert (run.runbook, run.status, run.started_by) == ("say", "succeeded", "@bob")
    [warned] = [n for n in notes(engine, incident_id) if n.startswith("Warning:")]
    assert f"its incident is in maintenance window {held_window} until " in warned
    assert warned.endswith("(reseating GPUs); running say for @bob as asked.")


def test_a_runbook_run_by_hand_on_a_target_in_maintenance_runs_with_a_warning(
    config_path: Path, engine: sa.Engine
):
    started = run(config_path, "start", "node:gpu-1", "--for", "1h", "--reason", "fans", "--json")
    held_window = json.loads(started.output)["id"]

    # Nothing listens on gpu-1's address here: the run goes ahead and fails at its step.
    ran = CliRunner().invoke(main, ["runbook", "run", "touch", "--yes", "-c", str(config_path)])

    assert f"warning: gpu-1 is in maintenance window {held_window} until" in ran.output
    assert "(fans); running it by hand anyway" in ran.output
    with db.session_factory(engine)() as s:
        assert [r.runbook for r in s.scalars(sa.select(RunbookRun))] == ["touch"]
