"""The engine over real SSH on the rig's nodes: what a run changes, records and undoes."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.incidents.models import Incident
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.executor import Executor, Progress
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunbookLock, RunStatus, UnitStatus
from reliability.runbooks.plan import PlannedStep
from reliability.testing.fleet import Fleet

MARKS = """
description: Write a mark on each blue node, then optionally fail.
params:
  text:
    type: string
    pattern: ".*"
  fail:
    type: choice
    choices: ["yes", "no"]
    default: "no"
targets:
  blue:
    pool: blue
steps:
  - id: mark
    action: ssh
    nodes: blue
    args:
      command: printf %s {text} > {dir}/{target}.mark
      changes: true
    undo:
      command: rm -f {dir}/{target}.mark
  - id: second
    action: ssh
    nodes: blue
    args:
      command: touch {dir}/{target}.second
      changes: true
    undo:
      command: rm -f {dir}/{target}.second
  - id: say
    action: ssh
    nodes: blue
    args:
      command: echo {text}
  - id: boom
    action: ssh
    when:
      value: "{fail}"
      equals: "yes"
    nodes: blue
    args:
      command: echo broken >&2; exit 3
"""


PARTIAL = """
description: A check that fails on gpu-1 only, tolerated up to a share of the nodes.
params:
  tolerate:
    type: int
    min: 0
    max: 100
targets:
  blue:
    pool: blue
steps:
  - id: check
    action: ssh
    nodes: blue
    max_fail_percent: 0
    args:
      command: test {target} != gpu-1
"""
HELD = sa.select(RunbookLock).where(RunbookLock.run_id.is_not(None))  # free locks keep a row
HANG = """
description: A command that hangs, tried twice; each try notes whether another still runs.
targets:
  one:
    node: gpu-1
steps:
  - id: hang
    action: ssh
    nodes: one
    timeout: 2s
    retries: 1
    backoff: 0.1s
    args:
      command: >-
        (pgrep -f '^sleep 6001$' >/dev/null && echo overlap || echo alone) >> {dir}/tries;
        sleep 6001
"""
SECRET_ENV = "RELIABILITY_TEST_WEBHOOK_TOKEN"
SECRET = "correct-horse-battery-staple"


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def shared_dir(rig: Fleet) -> Iterator[Path]:
    """A directory the rig's login user can write, as the nodes' 'disk'."""
    directory = Path(tempfile.mkdtemp(dir=rig.dir))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def rig_config(rig: Fleet, tmp_path: Path, shared_dir: Path) -> Config:
    books = tmp_path / "runbooks"
    books.mkdir()
    text = MARKS.replace("{dir}", str(shared_dir))
    (books / "marks.yaml").write_text(textwrap.dedent(text).lstrip())
    (books / "partial.yaml").write_text(textwrap.dedent(PARTIAL).lstrip())
    (books / "hang.yaml").write_text(textwrap.dedent(HANG.replace("{dir}", str(shared_dir))))
    config = {
        **rig.config_sections(),
        "http": {"webhook_token_env": SECRET_ENV},
        "runbooks_dir": str(books),
    }
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(path)


@pytest.fixture
def run_marks(rig_config: Config, engine: sa.Engine) -> Callable[..., tuple[int, Executor]]:
    made: list[Executor] = []

    def run(**given: str) -> tuple[int, Executor]:
        book = load_runbooks(rig_config)["marks"]
        values = params_mod.resolve(book, given, rig_config)
        runner = Executor(rig_config, engine)
        made.append(runner)
        result = runner.run(book, values, actor="test")
        return result.run_id, runner

    yield run
    for runner in made:
        runner.close()


def _blue(rig: Fleet) -> list[str]:
    return [n.name for n in rig.nodes if n.pool == "blue"]


def test_a_run_changes_every_target_and_records_each_command(
    rig: Fleet, run_marks: Callable[..., tuple[int, Executor]], shared_dir: Path, engine: sa.Engine
) -> None:
    run_id, _ = run_marks(text="hello world")

    for name in _blue(rig):
        assert (shared_dir / f"{name}.mark").read_text() == "hello world"
    with db.session_factory(engine)() as s:
        run = runs.get_run(s, run_id=run_id)
        units = runs.units(s, run_id=run_id)
        assert run.status == RunStatus.succeeded and run.ended_at is not None
        assert not s.scalars(HELD).all()
    marks = [u for u in units if u.step == "mark"]
    assert sorted(u.target for u in marks) == sorted(_blue(rig))
    entry = marks[0].log[0]
    assert entry["exit_status"] == 0 and entry["ok"]
    assert entry["detail"] == f"printf %s 'hello world' > {shared_dir}/{marks[0].target}.mark"
    assert [u.status for u in units if u.step == "boom"] == [UnitStatus.skipped]


def test_a_failed_step_undoes_the_run_newest_first_and_says_why(
    rig: Fleet, run_marks: Callable[..., tuple[int, Executor]], shared_dir: Path, engine: sa.Engine
) -> None:
    run_id, _ = run_marks(text="x", fail="yes")

    assert list(shared_dir.iterdir()) == []  # both changing steps were put back
    with db.session_factory(engine)() as s:
        run = runs.get_run(s, run_id=run_id)
        units = runs.units(s, run_id=run_id)
    assert run.status == RunStatus.failed
    assert "step boom failed" in (run.reason or "") and "exit 3: broken" in (run.reason or "")
    assert "put back" in (run.reason or "")
    undone = [u for u in units if u.status == UnitStatus.undone]
    assert {u.step for u in undone} == {"mark", "second"}
    # Newest first: every `second` was undone before any `mark`.
    undo_at = {
        step: [e["at"] for u in undone if u.step == step for e in u.log if e.get("undo")]
        for step in ("mark", "second")
    }
    assert len(undo_at["second"]) == len(undo_at["mark"]) == len(_blue(rig))
    assert max(undo_at["second"]) <= min(undo_at["mark"])


def test_shell_metacharacters_in_a_parameter_arrive_as_one_literal_word(
    rig: Fleet, run_marks: Callable[..., tuple[int, Executor]], shared_dir: Path
) -> None:
    elsewhere = Path(tempfile.mkdtemp(dir=rig.dir))
    elsewhere.chmod(0o777)  # the login user could make the canary here
    canary = elsewhere / "canary"
    hostile = f"; rm -rf {shared_dir} ; $(touch {canary}) `touch {canary}` && echo pwned"

    run_marks(text=hostile)

    for name in _blue(rig):
        assert (shared_dir / f"{name}.mark").read_text() == hostile
    assert not canary.exists()


def test_a_service_lock_held_by_a_live_run_refuses_a_second_run(engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        first = runs.create_run(
            s,
            runbook="a",
            params={},
            services=["chat"],
            started_by="alice",
            incident_id=None,
            now=now,
        )
        runs.acquire_locks(s, run=first, services=["chat"], now=now)
        second = runs.create_run(
            s,
            runbook="b",
            params={},
            services=["chat"],
            started_by="bob",
            incident_id=None,
            now=now,
        )
        with pytest.raises(runs.Locked, match=f"locked by run {first.id} \\(a, started by alice"):
            runs.acquire_locks(s, run=second, services=["chat"], now=now)


def test_a_run_whose_process_died_is_reported_interrupted_and_its_lock_freed(
    engine: sa.Engine,
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        run = runs.create_run(
            s,
            runbook="blue-green",
            params={},
            services=["chat"],
            started_by="alice",
            incident_id=None,
            now=now,
        )
        runs.acquire_locks(s, run=run, services=["chat"], now=now)
        run.pid, run.step = gone.pid, "switch"
    with db.session_factory(engine).begin() as s:
        found = runs.recover_interrupted(s, now=now + timedelta(seconds=1))
    assert [(f.run_id, f.step) for f in found] == [(run.id, "switch")]
    assert f"runbook undo {run.id}" in found[0].reason
    with db.session_factory(engine)() as s:
        assert runs.get_run(s, run_id=run.id).status == RunStatus.interrupted
        assert not s.scalars(HELD).all()


def test_recorded_commands_and_output_never_show_a_secret_of_the_config(
    rig: Fleet, run_marks: Callable[..., tuple[int, Executor]], engine: sa.Engine
) -> None:
    run_id, _ = run_marks(text=f"token={SECRET}")

    with db.session_factory(engine)() as s:
        said = [u for u in runs.units(s, run_id=run_id) if u.step == "say"]
    assert said and all(u.status == UnitStatus.ok for u in said)
    for unit in said:
        (entry,) = unit.log
        assert SECRET not in entry["detail"] and SECRET not in entry["output"]
        assert entry["output"] == "token=<redacted>"


@pytest.mark.parametrize(("tolerate", "status"), [(0, RunStatus.failed), (50, RunStatus.succeeded)])
def test_max_fail_percent_decides_whether_some_failed_nodes_fail_the_step(
    rig: Fleet, rig_config: Config, engine: sa.Engine, tolerate: int, status: RunStatus
) -> None:
    book = load_runbooks(rig_config)["partial"]
    step = book.steps[0].model_copy(update={"max_fail_percent": tolerate})
    book = book.model_copy(update={"steps": [step]})
    runner = Executor(rig_config, engine)
    try:
        result = runner.run(book, {"tolerate": tolerate}, actor="test")
    finally:
        runner.close()

    assert result.status == status
    with db.session_factory(engine)() as s:
        per_node = {u.target: u.status for u in runs.units(s, run_id=result.run_id)}
    assert per_node == {"gpu-1": UnitStatus.failed, "gpu-2": UnitStatus.ok}
    if status == RunStatus.failed:
        assert "1 of 2 targets failed: gpu-1: exit 1" in (result.reason or "")


def test_a_hung_command_is_gone_from_the_node_after_its_timeout_and_a_retry_never_overlaps_it(
    rig: Fleet, rig_config: Config, engine: sa.Engine, shared_dir: Path
) -> None:
    runner = Executor(rig_config, engine)
    try:
        result = runner.run(load_runbooks(rig_config)["hang"], {}, actor="test")
        listed = runner.ssh.run(
            rig.ssh_target("gpu-1"), "ps -e -o stat= -o args=", timeout=5
        ).stdout.splitlines()
    finally:
        runner.close()

    assert result.status == RunStatus.failed
    assert "process group" in (result.reason or "") and "was ended on the node" in result.reason
    assert (shared_dir / "tries").read_text().split() == ["alone", "alone"]
    hung = [line for line in listed if line.split(None, 1)[1:] == ["sleep 6001"]]
    assert all(line.startswith("Z") for line in hung), hung  # none alive


class Outage:
    """The database going away under a run and coming back, as each backend does: SQLite
    held by another writer (a write waits its busy_timeout, then fails), PostgreSQL
    refusing connections, its sessions ended."""

    def __init__(self, url: str, server: sa.Engine | None) -> None:
        self.url, self.server = sa.engine.make_url(url), server
        self.lock = threading.Lock()
        self.holder: sqlite3.Connection | None = None
        self.down = False

    def _pg(self, sql: str) -> None:
        assert self.server is not None
        with self.server.connect() as connection:
            connection.exec_driver_sql(sql)

    def stop(self) -> None:
        with self.lock:
            if self.down:
                return
            self.down = True
            if self.server is None:
                self.holder = sqlite3.connect(
                    self.url.database or "",
                    timeout=10,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self.holder.execute("BEGIN EXCLUSIVE")
                return
            name = self.url.database
            self._pg(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            self._pg(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )

    def start(self) -> None:
        with self.lock:
            if not self.down:
                return
            self.down = False
            if self.holder is not None:
                self.holder.execute("ROLLBACK")
                self.holder.close()
                self.holder = None
                return
            self._pg(f'ALTER DATABASE "{self.url.database}" ALLOW_CONNECTIONS true')


class DatabaseGoesAway(Progress):
    """Stops the database once the first step has changed the nodes; starts it again
    `back_after` seconds into the undo (never, with None)."""

    def __init__(self, outage: Outage, back_after: float | None) -> None:
        self.outage, self.back_after = outage, back_after

    def unit(self, step: PlannedStep, target: str, ok: bool, text: str) -> None:
        if step.id == "mark" and step.action != "undo":
            self.outage.stop()

    def undoing(self, reason: str) -> None:
        if self.back_after is not None:
            threading.Timer(self.back_after, self.outage.start).start()


@pytest.fixture
def outage(
    backend: str, database_url: str, engine: sa.Engine, request: pytest.FixtureRequest
) -> Iterator[Outage]:
    server = request.getfixturevalue("pg_server") if backend == "postgres" else None
    stopped = Outage(database_url, server)
    yield stopped
    stopped.start()


def run_losing_the_database(
    rig_config: Config, database_url: str, outage: Outage, back_after: float | None, wait: float
):
    own = db.make_engine(database_url)  # the run's own pool, as another process would have
    runner = flows.executor(
        rig_config, own, progress=DatabaseGoesAway(outage, back_after), database_wait=wait
    )
    try:
        book = load_runbooks(rig_config)["marks"]
        return runner.run(book, params_mod.resolve(book, {"text": "x"}, rig_config), actor="test")
    finally:
        runner.close()
        own.dispose()


def test_a_database_failing_mid_run_undoes_the_change_and_opens_a_critical_incident(
    rig: Fleet, rig_config: Config, database_url: str, outage: Outage, shared_dir: Path
) -> None:
    result = run_losing_the_database(rig_config, database_url, outage, back_after=1.0, wait=30)

    assert list(shared_dir.iterdir()) == []  # the marks the first step wrote are gone
    assert result.status == RunStatus.failed
    assert "the database failed mid-run" in (result.reason or "")
    assert "everything it changed was put back" in (result.reason or "")
    with db.session_factory(db.make_engine(database_url))() as s:
        run = runs.get_run(s, run_id=result.run_id)
        marks = [u.status for u in runs.units(s, run_id=result.run_id) if u.step == "mark"]
        (incident,) = s.scalars(sa.select(Incident)).all()
        assert run.status == RunStatus.failed and not s.scalars(sa.select(RunbookLock)).all()
    assert marks and set(marks) == {UnitStatus.undone}
    assert incident.severity == "critical"
    assert f"Runbook run {result.run_id} (marks) lost its database" in incident.title
    assert "everything it changed was put back" in (incident.summary or "")


def test_a_database_that_stays_away_still_gets_the_change_undone_and_says_so_in_the_log(
    rig: Fleet,
    rig_config: Config,
    database_url: str,
    outage: Outage,
    shared_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="reliability"):
        result = run_losing_the_database(
            rig_config, database_url, outage, back_after=None, wait=1.0
        )

    assert list(shared_dir.iterdir()) == []
    assert "not recorded: the database is still failing" in (result.reason or "")
    (loud,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    said = loud.getMessage()
    assert f"run {result.run_id} (marks) ended failed but the database does not record it" in said
    assert "everything it changed was put back" in said
