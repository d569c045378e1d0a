"""The runbooks domain's shape: actions come from one registry, the lower modules reach no
other domain (flows.py does), every error is a RunbookError, and a run in the wrong state
says so instead of claiming a lock."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from reliability import db
from reliability.config import Config
from reliability.runbooks import errors
from reliability.runbooks import service as runs
from reliability.runbooks.actions import REGISTRY
from reliability.runbooks.actions.base import Action, NodeStep, StepBase
from reliability.runbooks.executor import Executor
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunStatus
from reliability.runbooks.spec import ACTIONS

PACKAGE = Path(__file__).resolve().parents[2] / "reliability" / "runbooks"
OTHER_DOMAINS = ("incidents", "images", "notify", "detect")
# Everything but the entry point (cli.py) and the cross-domain work (flows.py).
LOWER = [
    p
    for p in [*PACKAGE.glob("*.py"), *PACKAGE.glob("actions/*.py")]
    if p.stem not in ("cli", "flows")
]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_flows_and_the_cli_reach_other_domains(path: Path) -> None:
    reached = {
        name
        for name in imported(path)
        for domain in OTHER_DOMAINS
        if name == f"reliability.{domain}" or name.startswith(f"reliability.{domain}.")
    }
    assert not reached, f"{path.name} imports {sorted(reached)}: move that work to flows.py"


def test_every_action_is_registered_once_with_its_step_and_how_it_plans() -> None:
    assert len(set(ACTIONS)) == len(ACTIONS)
    for action in REGISTRY:
        assert issubclass(action.step, StepBase)
        # A per-node step plans a unit per node (or its units per batch); a step that runs
        # once plans its units.
        if issubclass(action.step, NodeStep):
            planned = (type(action).unit, type(action).units) != (Action.unit, Action.units)
        else:
            planned = type(action).plan is not Action.plan
        assert planned, action.kind
        for check in action.checks:
            assert REGISTRY.check(check.__name__) is check
            assert callable(check.perform)


def test_every_runbook_error_has_the_one_base() -> None:
    found = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert all(issubclass(e, errors.RunbookError) for e in found)
    bad_input = {e.__name__ for e in found if e.bad_input}
    assert bad_input == {"ParamError", "ScopeError", "PlanError", "BrokenRunbook", "NoSuchRunbook"}
    assert runs.Locked is errors.Locked and runs.NoSuchRun is errors.NoSuchRun


def test_a_run_not_interrupted_is_neither_resumed_nor_undone(
    example: Config, engine: sa.Engine
) -> None:
    now = datetime.now(UTC)
    with db.session_factory(engine).begin() as s:
        run = runs.create_run(
            s,
            runbook="blue-green",
            params={"service": "chat", "pool": "green"},
            services=["chat"],
            started_by="test",
            incident_id=None,
            now=now,
        )
        runs.finish_run(s, run_id=run.id, status=RunStatus.succeeded, reason=None, now=now)
    runner = Executor(example, engine)
    try:
        book = load_runbooks(example)["blue-green"]
        with pytest.raises(errors.WrongRunState, match="succeeded; only an interrupted run"):
            runner.resume(book, run.id)
        with pytest.raises(errors.WrongRunState, match="only an interrupted run, or one whose"):
            runner.undo(run.id)
        with pytest.raises(errors.NoSuchRun, match=f"no runbook run {run.id + 1}"):
            runner.undo(run.id + 1)
    finally:
        runner.close()
