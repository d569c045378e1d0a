"""`reliability runbook ...`: list, show, plan, run, status, history, resume, undo. Exit 2
for a bad runbook file or parameter, 1 for a runbook that does not exist or a run that did
not succeed. Runbook errors map to exit codes in one place (`_failures`); commands raise,
they never exit."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from reliability import db
from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    database,
    database_engine,
    err_console,
    json_option,
    print_json,
    who,
)
from reliability.config import Config, ConfigError
from reliability.durations import format_duration
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks import service as runs
from reliability.runbooks.checks import OpOutcome
from reliability.runbooks.errors import RunbookError
from reliability.runbooks.executor import Executor, Progress, RunResult
from reliability.runbooks.load import Runbooks, load_runbooks, named
from reliability.runbooks.models import RunStatus
from reliability.runbooks.ops import LOCAL, Op
from reliability.runbooks.perform import Redactor
from reliability.runbooks.plan import Plan, PlannedStep, make_plan
from reliability.runbooks.spec import Param, PoolParam, Runbook


@contextmanager
def _failures(subject: str | None = None) -> Iterator[None]:
    """Runbook errors as exit codes: bad input (a parameter, a plan this config cannot
    make) exits 2, prefixed with `subject`; an operation that could not go on (a lock, a
    run in the wrong state, no such run) exits 1."""
    try:
        yield
    except RunbookError as exc:
        if exc.bad_input:
            raise BadInput(f"{subject}: {exc}" if subject else str(exc)) from None
        raise CommandFailed(str(exc)) from None


def _runbooks(config: Config) -> Runbooks:
    try:
        return load_runbooks(config)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _runbook(config: Config, name: str) -> Runbook:
    books = _runbooks(config)
    with _failures():
        return named(books, name, config)


def _param_summary(name: str, p: Param) -> str:
    kind = f"pool of {{{p.of}}}" if isinstance(p, PoolParam) and p.of else p.type
    default = getattr(p, "default", None)
    return f"{name}: {kind}" + (f" = {default}" if default is not None else "")


@click.group()
def runbook() -> None:
    """Runbooks: list, show, plan, run; a run's status, history, resume and undo."""


@runbook.command("list")
@config_option
@json_option
def list_(config: Config, as_json: bool) -> None:
    """List the runbooks of `runbooks_dir` with their parameters."""
    books = _runbooks(config)
    for name in books.broken:
        err_console.print(
            f"runbook {name} is left out, its file has problems (see `config check`)",
            markup=False,
        )
    if as_json:
        print_json(
            [
                {"name": b.name, "description": b.description, "params": _params_json(b)}
                for b in books.values()
            ]
        )
        return
    if not books:
        console.print(f"No runbooks in {config.runbooks_path()}.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "DESCRIPTION", "PARAMS"):
        table.add_column(col, overflow="fold")
    for b in books.values():
        params = ", ".join(_param_summary(n, p) for n, p in b.params.items())
        table.add_row(b.name, b.description, params or "-")
    console.print(table)


def _params_json(b: Runbook) -> dict[str, object]:
    return {
        n: {**p.model_dump(mode="json", exclude_none=True), "required": p.required}
        for n, p in b.params.items()
    }


@runbook.command()
@click.argument("name")
@config_option
@json_option
def show(config: Config, name: str, as_json: bool) -> None:
    """Show one runbook: its parameters, target groups and steps."""
    b = _runbook(config, name)
    if as_json:
        print_json(b.model_dump(mode="json", by_alias=True, exclude_none=True))
        return
    out = [f"{b.name}: {b.description}", f"file: {b.source}", "params:"]
    out += [f"  {_param_summary(n, p)}  {p.description}".rstrip() for n, p in b.params.items()]
    out.append("targets:")
    for group_name, g in b.targets.items():
        chosen = g.model_dump(exclude_none=True)
        out.append(f"  {group_name}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    out.append("steps:")
    for i, s in enumerate(b.steps, 1):
        on = f" on {s.nodes}" if hasattr(s, "nodes") else ""
        undo = "" if s.undo is None else f", undo: {s.undo if s.undo == 'restore' else 'command'}"
        out.append(f"  {i}. {s.id}: {s.action}{on}{undo}")
    console.print("\n".join(out), markup=False)


param_option = click.option(
    "-p", "--param", "param_items", multiple=True, metavar="NAME=VALUE", help="A parameter."
)


def _values(config: Config, b: Runbook, param_items: tuple[str, ...]) -> dict[str, Any]:
    with _failures(b.name):
        return params_mod.resolve(b, params_mod.parse_assignments(param_items), config)


@runbook.command()
@click.argument("name")
@param_option
@config_option
@json_option
def plan(config: Config, name: str, param_items: tuple[str, ...], as_json: bool) -> None:
    """Print exactly what `run` would do, per target, with every command. Touches nothing.
    With a database, pools and known-good images are as a run would find them now."""
    b = _runbook(config, name)
    values = _values(config, b, param_items)
    with _failures(name):
        result = _live_plan(config, b, values)
    if as_json:
        print_json(result.as_dict())
        return
    console.print("\n".join(plan_lines(result)), markup=False, highlight=False)


def plan_lines(p: Plan) -> Iterator[str]:
    """The plan as an operator reads it before saying yes."""
    given = " ".join(f"{k}={v}" for k, v in p.params.items())
    yield f"Plan of runbook {p.runbook}" + (f" with {given}" if given else "")
    if p.locks:
        yield f"Locks: service {', '.join(p.locks)} (held for the whole run)"
    yield "<...> is a value the run reads when it gets there. Nothing below has run."
    for i, step in enumerate(p.steps, 1):
        yield ""
        yield from _step_lines(i, step)


def _step_lines(i: int, s: PlannedStep) -> Iterator[str]:
    header = f"{i}. {s.id} ({s.action})"
    if s.skipped:
        yield f"{header}: SKIPPED, {s.skipped}"
        return
    retry = f", {s.retries} retries from {format_duration(s.backoff)} doubling" if s.retries else ""
    yield f"{header}: timeout {format_duration(s.timeout)}{retry if s.retries else ''}"
    if s.description:
        yield f"   {s.description}"
    if s.batches:
        batches = " then ".join("[" + ", ".join(b) + "]" for b in s.batches)
        stop = (
            f"over {s.max_fail_percent}% of its nodes fail"
            if s.max_fail_percent
            else "any node fails"
        )
        yield f"   batches: {batches}; the step fails when {stop}"
    for unit in s.units:
        if unit.target != LOCAL:
            yield f"   on {unit.target}:"
        yield from (f"     {line}" for op in unit.ops for line in _op_lines(op))
        if unit.undo:
            yield f"   undo{'' if unit.target == LOCAL else ' on ' + unit.target}:"
            yield from (f"     {line}" for op in unit.undo for line in _op_lines(op))
        if unit.cleanup:
            where = "" if unit.target == LOCAL else " on " + unit.target
            yield f"   once the run succeeded{where}:"
            yield from (f"     {line}" for op in unit.cleanup for line in _op_lines(op))


def _op_lines(op: Op) -> Iterator[str]:
    note = f"    # {op.note}" if op.note else ""
    if op.kind == "run":
        yield f"{op.where} $ {op.detail}{note}"
    else:
        yield f"{op.where} {op.kind}: {op.detail}{note}"
    if op.stdin is not None:
        yield from (f"    | {line}" for line in str(op.stdin).splitlines())


def _live_plan(config: Config, b: Runbook, values: dict[str, Any]) -> Plan:
    """The plan with the database's view (switched pools, known-good images) when a
    database is there; from the config alone when it is not."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(config.database_url())
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            return make_plan(b, values, config)  # no database yet: a plan must not make one
        engine = db.make_engine(
            url, config.database.limits(), sqlite_synchronous=config.database.sqlite_synchronous
        )
        db.check_schema(engine)
    except (ConfigError, db.DatabaseError, sa_exc.ArgumentError):
        return make_plan(b, values, config)
    try:
        return flows.plan_now(config, db.session_factory(engine), b, values)
    finally:
        engine.dispose()


# --- running ------------------------------------------------------------------------------
class _Printer(Progress):
    """Live progress on the terminal: a line per step, command and target."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def _say(self, text: str) -> None:
        self.out.print(text, markup=False, highlight=False)

    def started(self, run_id: int, plan: Plan) -> None:
        self._say(f"run {run_id}: runbook {plan.runbook}, locked service {', '.join(plan.locks)}")

    def step(self, index: int, step: PlannedStep) -> None:
        if step.skipped:
            self._say(f"{index + 1}. {step.id}: skipped, {step.skipped}")
        else:
            self._say(f"{index + 1}. {step.id} ({step.action})")

    def op(self, target: str, op: Op, outcome: OpOutcome) -> None:
        what = f"$ {op.detail}" if op.kind == "run" else f"{op.kind}: {op.detail}"
        mark = "ok" if outcome.ok else "FAILED"
        self._say(f"   {target} {what[:160]}  [{mark} {outcome.seconds:.2f}s] {outcome.text}")

    def unit(self, step: PlannedStep, target: str, ok: bool, text: str) -> None:
        if not ok:
            self._say(f"   {target}: {step.id} FAILED: {text}")

    def undoing(self, reason: str) -> None:
        self._say(f"{reason}. Undoing what the run changed, newest first.")

    def locks(self, text: str) -> None:
        self._say(text)

    def finished(self, result: RunResult) -> None:
        tail = f": {result.reason}" if result.reason else ""
        self._say(f"run {result.run_id} {result.status}{tail}")


def _ask(prompt: str) -> bool:
    if not sys.stdin.isatty():
        err_console.print(f"confirm step needs a person at a terminal: {prompt}", markup=False)
        return False
    return click.confirm(prompt, default=False)


class _StopOnSignal:
    """SIGINT/SIGTERM: finish the current step (a step that only waits on an HTTP check
    stops waiting), undo, end `aborted`."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop.is_set():
            name = signal.Signals(signum).name
            err_console.print(f"{name}: finishing the current step, then undoing", markup=False)
        self.stop.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _recover(config: Config, as_json: bool) -> None:
    """Mark runs a dead process left `running` interrupted (their locks freed); say so."""
    out = err_console if as_json else console
    with database(config) as s:
        found = runs.recover_interrupted(s, now=datetime.now(UTC))
    for run in found:
        out.print(f"run {run.run_id} ({run.runbook}) was interrupted: {run.reason}", markup=False)


def _executor(
    config: Config, engine: Engine, as_json: bool, approver: str | None = None
) -> Executor:
    _recover(config, as_json)
    out = err_console if as_json else console
    return flows.executor(config, engine, progress=_Printer(out), confirm=_ask, approver=approver)


def _report(result: RunResult, as_json: bool) -> None:
    if as_json:
        print_json({"run_id": result.run_id, "status": result.status, "reason": result.reason})
    if result.status != RunStatus.succeeded and result.status != RunStatus.undone:
        raise CommandFailed(f"run {result.run_id} {result.status}: {result.reason}")


@runbook.command()
@click.argument("name")
@param_option
@click.option(
    "--yes",
    is_flag=True,
    help="Start without asking, and pass confirm steps marked `approval: auto` "
    "(`approval: terminal` ones still ask).",
)
@click.option("--incident", type=int, default=None, help="The incident the run answers.")
@config_option
@json_option
def run(
    config: Config,
    name: str,
    param_items: tuple[str, ...],
    yes: bool,
    incident: int | None,
    as_json: bool,
) -> None:
    """Run a runbook: lock its services, perform each step with live progress, record
    everything; on a failed step, or Ctrl-C, undo what it changed, newest first."""
    b = _runbook(config, name)
    values = _values(config, b, param_items)
    with database_engine(config) as engine, _failures(name):
        runner = _executor(config, engine, as_json, approver="--yes" if yes else None)
        try:
            planned = runner.plan(b, values)
            with runner.sessions() as s:
                covered = flows.in_maintenance(s, planned, now=datetime.now(UTC))
            if covered is not None:
                # A person may run it anyway: they may be the one doing the maintenance.
                err_console.print(
                    f"warning: {covered[0]} is in {covered[1].describe()}; "
                    "running it by hand anyway",
                    markup=False,
                )
            if not yes:
                err_console.print("\n".join(plan_lines(planned)), markup=False, highlight=False)
                if not sys.stdin.isatty() or not click.confirm("Run it?", default=False):
                    raise CommandFailed("not run: answer yes at a terminal, or pass --yes")
            with _StopOnSignal(runner.stop):
                result = runner.run(b, values, actor=who(), incident_id=incident, plan=planned)
        finally:
            runner.close()
    _report(result, as_json)


@runbook.command()
@click.argument("run_id", type=int)
@config_option
@json_option
def resume(config: Config, run_id: int, as_json: bool) -> None:
    """Complete an interrupted run from the step it reached."""
    with database_engine(config) as engine, _failures(f"run {run_id}"):
        runner = _executor(config, engine, as_json)
        try:
            with runner.sessions() as s:
                name = runs.get_run(s, run_id=run_id).runbook
            with _StopOnSignal(runner.stop):
                result = runner.resume(_runbook(config, name), run_id)
        finally:
            runner.close()
    _report(result, as_json)


@runbook.command()
@click.argument("run_id", type=int)
@click.option("--yes", is_flag=True, help="Undo without asking.")
@config_option
@json_option
def undo(config: Config, run_id: int, yes: bool, as_json: bool) -> None:
    """Reverse what an interrupted run changed (or retry a failed undo), newest first."""
    if not yes and not (sys.stdin.isatty() and click.confirm(f"Undo run {run_id}?")):
        raise CommandFailed("not undone: answer yes at a terminal, or pass --yes")
    with database_engine(config) as engine, _failures(f"run {run_id}"):
        runner = _executor(config, engine, as_json)
        try:
            result = runner.undo(run_id)
        finally:
            runner.close()
    _report(result, as_json)


# --- the record ---------------------------------------------------------------------------
def _run_json(run: Any) -> dict[str, Any]:
    keys = ("id", "runbook", "params", "services", "status", "reason", "step", "started_by")
    data = {k: getattr(run, k) for k in keys}
    data.update(
        incident_id=run.incident_id,
        started_at=run.started_at,
        ended_at=run.ended_at,
    )
    return data


@runbook.command()
@click.argument("run_id", type=int)
@config_option
@json_option
def status(config: Config, run_id: int, as_json: bool) -> None:
    """One run: its state, and every step on every target with the commands it sent."""
    _recover(config, as_json)
    with database(config) as s, _failures():
        run = runs.get_run(s, run_id=run_id)
        units = runs.units(s, run_id=run_id)
    # The record was redacted when written; its parameters were not (resume needs them).
    redact = Redactor(config.secret_values())
    if as_json:
        print_json(
            _redacted(
                {
                    **_run_json(run),
                    "steps": [
                        {
                            "step": u.step,
                            "action": u.action,
                            "target": u.target,
                            "status": u.status,
                            "attempts": u.attempts,
                            "error": u.error,
                            "started_at": u.started_at,
                            "ended_at": u.ended_at,
                            "log": u.log,
                        }
                        for u in units
                    ],
                },
                redact,
            )
        )
        return
    params = " ".join(f"{k}={v}" for k, v in run.params.items())
    lines = [
        f"run {run.id}: {run.runbook} {params}".rstrip(),
        f"status: {run.status}" + (f" ({run.reason})" if run.reason else ""),
        f"started {run.started_at:%Y-%m-%d %H:%M:%S}Z by {run.started_by}"
        + (f", incident {run.incident_id}" if run.incident_id else ""),
    ]
    for u in units:
        lines.append(f"  {u.step} on {u.target}: {u.status}" + (f", {u.error}" if u.error else ""))
        for e in u.log:
            mark = "undo " if e.get("undo") else ""
            result = "ok" if e["ok"] else "FAILED"
            lines.append(f"      {mark}{e['where']} {e['detail'][:140]}  [{result}] {e['result']}")
    console.print(redact("\n".join(lines)), markup=False, highlight=False)


def _redacted(data: Any, redact: Redactor) -> Any:
    """`data` (JSON-shaped) with every string redacted."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: _redacted(v, redact) for k, v in data.items()}
    if isinstance(data, list):
        return [_redacted(v, redact) for v in data]
    return data


@runbook.command()
@click.option("--service", default=None, help="Only runs that locked this service.")
@click.option("--limit", type=int, default=20, show_default=True)
@config_option
@json_option
def history(config: Config, service: str | None, limit: int, as_json: bool) -> None:
    """Recent runs, newest first."""
    _recover(config, as_json)
    with database(config) as s:
        found = runs.history(s, service=service, limit=limit)
    if as_json:
        print_json([_run_json(r) for r in found])
        return
    if not found:
        console.print("No runbook runs yet.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "RUNBOOK", "STATUS", "SERVICES", "STARTED", "BY", "STEP / REASON"):
        table.add_column(col, overflow="fold")
    for r in found:
        table.add_row(
            str(r.id),
            r.runbook,
            r.status,
            ", ".join(r.services),
            f"{r.started_at:%Y-%m-%d %H:%M}Z",
            r.started_by,
            r.reason or r.step or "",
        )
    console.print(table)
