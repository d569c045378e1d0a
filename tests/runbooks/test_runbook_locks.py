"""Runs that meet at a service's lock, over real SSH on the rig: a run whose lock was taken
over stops before its next change and undoes nothing; a step with `release_locks` lets
another run act while it waits and takes the lock back (a new epoch) before acting; and
the daemon's cooldown is per runbook and target, not per service."""

from __future__ import annotations

import logging
import shutil
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.detect.evaluator import Transition
from reliability.detect.render import RunbookRequest
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.executor import Executor, Progress, RunResult
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunbookLock, RunbookRun, RunStatus, UnitStatus
from reliability.ssh import SshPool
from reliability.testing.fleet import Fleet
from reliability.testing.nginx import NginxBalancer

WAIT_SECONDS_MAX = 60.0  # every polling loop below ends by this

MARK_WAIT_MARK = """
description: Mark each blue node, wait, mark again.
params:
  pause:
    type: string
    pattern: "[0-9]+"
targets:
  blue:
    pool: blue
steps:
  - id: first
    action: ssh
    nodes: blue
    args:
      command: touch {dir}/{target}.first
      changes: true
    undo:
      command: rm -f {dir}/{target}.first
  - id: wait
    action: ssh
    nodes: blue{release}
    args:
      command: sleep {pause}
  - id: second
    action: ssh
    nodes: blue
    args:
      command: touch {dir}/{target}.second
      changes: true
    undo:
      command: rm -f {dir}/{target}.second
"""


class Said(Progress):
    """What a run said about its locks, in order."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def locks(self, text: str) -> None:
        self.texts.append(text)


@pytest.fixture
def marks_dir(rig: Fleet) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(dir=rig.dir))
    directory.chmod(0o777)  # the rig's login user writes the marks
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def config(rig: Fleet, tmp_path: Path, marks_dir: Path) -> Config:
    books = tmp_path / "runbooks"
    books.mkdir()
    for name, release in (("hold", ""), ("let-go", "\n    release_locks: true")):
        text = MARK_WAIT_MARK.replace("{dir}", str(marks_dir)).replace("{release}", release)
        (books / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())
    path = tmp_path / "reliability.yaml"
    path.write_text(yaml.safe_dump({**rig.config_sections(), "runbooks_dir": str(books)}))
    return load_config(path)


def start(
    config: Config, engine: sa.Engine, name: str, pause: str
) -> tuple[threading.Thread, list[RunResult], Said]:
    """Run `name` on a thread, locking service chat (as a runbook touching it would)."""
    book = load_runbooks(config)[name]
    values = params_mod.resolve(book, {"pause": pause}, config)
    said, results = Said(), []
    runner = Executor(config, engine, progress=said)
    plan = replace(runner.plan(book, values), locks=["chat"])

    def go() -> None:
        try:
            results.append(runner.run(book, values, actor="test", plan=plan))
        finally:
            runner.close()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, results, said


def until(what: str, ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while not ok():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS_MAX}s: {what}"
        time.sleep(0.05)


def at_step(engine: sa.Engine, step: str) -> bool:
    with db.session_factory(engine)() as s:
        run = s.scalars(sa.select(RunbookRun).order_by(RunbookRun.id.desc())).first()
        return run is not None and run.step == step


def lock(engine: sa.Engine) -> tuple[int | None, int] | None:
    """The holder and epoch of service chat's lock; None before it was ever taken."""
    with db.session_factory(engine)() as s:
        row = s.get(RunbookLock, "chat")
        return None if row is None else (row.run_id, row.epoch)


def other_run(session: sa.orm.Session, now: datetime) -> RunbookRun:
    return runs.create_run(
        session,
        runbook="blue-green",
        params={},
        services=["chat"],
        started_by="bob",
        incident_id=None,
        now=now,
    )


def marks(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_a_run_whose_lock_was_taken_over_stops_before_its_next_change_and_undoes_nothing(
    rig: Fleet, config: Config, engine: sa.Engine, marks_dir: Path
) -> None:
    thread, results, said = start(config, engine, "hold", pause="3")
    until("the run waits between its marks", lambda: at_step(engine, "wait"))
    assert lock(engine) == (1, 1)
    # The run is taken for dead (its heartbeat is stale) and another run takes the lock.
    now = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        (first,) = s.scalars(sa.select(RunbookRun)).all()
        first.heartbeat_at = now - 2 * runs.STALE_AFTER
        taker = other_run(s, now)
        assert runs.acquire_locks(s, run=taker, services=["chat"], now=now) == {"chat": 2}
        taker_id = taker.id

    thread.join(WAIT_SECONDS_MAX)

    (result,) = results
    assert result.status == RunStatus.failed
    assert result.reason is not None
    assert result.reason.startswith(
        f"fenced: lock of chat taken over by run {taker_id}; stopped in step second; "
        "nothing more undone"
    )
    # Its first marks stay (they are the new holder's world now); no second mark was made.
    assert marks(marks_dir) == {"gpu-1.first", "gpu-2.first"}
    assert lock(engine) == (taker_id, 2)
    assert any(f"fenced: lock of chat taken over by run {taker_id}" in t for t in said.texts)
    with db.session_factory(engine)() as s:
        row = runs.get_run(s, run_id=result.run_id)
        units = runs.units(s, run_id=result.run_id)
    assert row.status == RunStatus.failed and row.reason == result.reason
    by_step = {(u.step, u.target): u for u in units}
    assert {by_step["first", n].status for n in ("gpu-1", "gpu-2")} == {UnitStatus.ok}
    assert all(by_step["second", n].log == [] for n in ("gpu-1", "gpu-2"))  # nothing sent


def test_a_waiting_step_lets_another_run_take_the_lock_and_the_run_takes_it_back_to_act(
    rig: Fleet, config: Config, engine: sa.Engine, marks_dir: Path
) -> None:
    thread, results, said = start(config, engine, "let-go", pause="2")
    until(
        "the run waits without its lock",
        lambda: at_step(engine, "wait") and lock(engine) == (None, 1),
    )
    now = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        other = other_run(s, now)
        # Not refused: the waiting run let go of the lock.
        assert runs.acquire_locks(s, run=other, services=["chat"], now=now) == {"chat": 2}
        other_id = other.id
    until("the run waits for the lock to act", lambda: any("waits up to" in t for t in said.texts))
    assert marks(marks_dir) == {"gpu-1.first", "gpu-2.first"}  # it waits, it does not act
    with db.session_factory(engine).begin() as s:
        runs.finish_run(s, run_id=other_id, status=RunStatus.succeeded, reason=None, now=now)

    thread.join(WAIT_SECONDS_MAX)

    (result,) = results
    assert result.status == RunStatus.succeeded, result.reason
    assert marks(marks_dir) == {"gpu-1.first", "gpu-2.first", "gpu-1.second", "gpu-2.second"}
    assert lock(engine) == (None, 3)  # taken back at a new epoch, freed at the end
    assert said.texts[0] == (
        f"run {result.run_id} lets go of the lock of chat while step wait waits; "
        "other runs may act meanwhile"
    )
    assert f"locked by run {other_id} (blue-green, started by bob" in said.texts[1]
    assert said.texts[2] == (
        f"run {result.run_id} holds the lock of chat (epoch 3) again for step second; "
        "other runs held chat meanwhile"
    )


PROBE = """
description: Check one node of a service answers a real completion.
params:
  node:
    type: node
targets:
  one:
    node: "{node}"
steps:
  - id: probe
    action: ready
    nodes: one
    args:
      service: "{node.service}"
      within: 10s
"""


def firing(node: str, fingerprint: str) -> Transition:
    request = RunbookRequest("probe", {"node": node}, auto=True)
    now = time.time()
    return Transition(
        kind="firing",
        fingerprint=fingerprint,
        rule="node-down",
        severity="critical",
        title=f"{node} down",
        summary="",
        labels={"node": node},
        value=1.0,
        threshold=0.0,
        value_text="1",
        threshold_text="0",
        since=now,
        at=now,
        runbook=request.command,
        runbook_request=request,
    )


def test_the_cooldown_is_per_runbook_and_target_not_per_service(
    rig_lb: NginxBalancer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    books = tmp_path / "runbooks"
    books.mkdir()
    (books / "probe.yaml").write_text(textwrap.dedent(PROBE).lstrip())
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    path = tmp_path / "reliability.yaml"
    service = {"name": "chat", "pools": ["blue", "green"], "active_pool": "blue"}
    config = {
        "database": {"url": url},
        **rig_lb.fleet.config_sections(),
        "services": [{**service, "container": {"name": "vllm"}, "auto_cooldown": "15m"}],
        "runbooks_dir": str(books),
    }
    path.write_text(yaml.safe_dump(config))
    runner = flows.AutoRunner(load_config(path), db.LazyEngine(url), SshPool())
    engine = db.make_engine(url)

    def ended() -> list[RunbookRun]:
        with db.session_factory(engine)() as s:
            return [r for r in runs.history(s) if r.status != RunStatus.running]

    caplog.set_level(logging.INFO, logger="reliability.runbooks.flows")
    runner.start()
    try:
        runner.submit(firing("gpu-1", "a"))
        until("gpu-1 probed", lambda: len(ended()) == 1)
        runner.submit(firing("gpu-2", "b"))  # another node, within the cooldown
        until("gpu-2 probed", lambda: len(ended()) == 2)
        runner.submit(firing("gpu-1", "c"))  # the same node again
        until("gpu-1 refused", lambda: "not run on its own" in caplog.text)
    finally:
        runner.stop()

    done = ended()
    assert sorted((r.params["node"], r.status, r.started_by) for r in done) == [
        ("gpu-1", RunStatus.succeeded, "daemon"),
        ("gpu-2", RunStatus.succeeded, "daemon"),
    ]
    first = next(r for r in done if r.params["node"] == "gpu-1")
    assert (
        f"Runbook probe not run on its own: run {first.id} (probe node=gpu-1, succeeded)"
        in caplog.text
    )
    assert "within the service's auto_cooldown for the same target" in caplog.text
