"""`reliability runbook ...`: list, show, plan. Exit 2 for a bad runbook file or parameter,
1 for a runbook that does not exist."""

from __future__ import annotations

from collections.abc import Iterator

import click
from rich.table import Table

from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    json_option,
    print_json,
)
from reliability.config import Config
from reliability.config_load import ConfigError
from reliability.durations import format_duration
from reliability.runbooks import params as params_mod
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.ops import LOCAL, Op
from reliability.runbooks.plan import Plan, PlanError, PlannedStep, make_plan
from reliability.runbooks.spec import Param, PoolParam, Runbook


def _runbooks(config: Config) -> dict[str, Runbook]:
    try:
        return load_runbooks(config)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _runbook(config: Config, name: str) -> Runbook:
    books = _runbooks(config)
    if name not in books:
        where = config.path(config.runbooks_dir)
        known = ", ".join(books) or "none"
        raise CommandFailed(f"no runbook is named {name!r} in {where}; known: {known}")
    return books[name]


def _param_summary(name: str, p: Param) -> str:
    kind = f"pool of {{{p.of}}}" if isinstance(p, PoolParam) and p.of else p.type
    default = getattr(p, "default", None)
    return f"{name}: {kind}" + (f" = {default}" if default is not None else "")


@click.group()
def runbook() -> None:
    """Runbooks: list them, show one, plan a run."""


@runbook.command("list")
@config_option
@json_option
def list_(config: Config, as_json: bool) -> None:
    """List the runbooks of `runbooks_dir` with their parameters."""
    books = _runbooks(config)
    if as_json:
        print_json(
            [
                {"name": b.name, "description": b.description, "params": _params_json(b)}
                for b in books.values()
            ]
        )
        return
    if not books:
        console.print(f"No runbooks in {config.path(config.runbooks_dir)}.")
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


@runbook.command()
@click.argument("name")
@click.option(
    "-p", "--param", "param_items", multiple=True, metavar="NAME=VALUE", help="A parameter."
)
@config_option
@json_option
def plan(config: Config, name: str, param_items: tuple[str, ...], as_json: bool) -> None:
    """Print exactly what `run` would do, per target, with every command. Touches nothing."""
    b = _runbook(config, name)
    try:
        values = params_mod.resolve(b, params_mod.parse_assignments(param_items), config)
        result = make_plan(b, values, config)
    except (params_mod.ParamError, PlanError) as exc:
        raise BadInput(f"{name}: {exc}") from None
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


def _op_lines(op: Op) -> Iterator[str]:
    note = f"    # {op.note}" if op.note else ""
    if op.kind == "run":
        yield f"{op.where} $ {op.detail}{note}"
    else:
        yield f"{op.where} {op.kind}: {op.detail}{note}"
    if op.stdin is not None:
        yield from (f"    | {line}" for line in op.stdin.splitlines())
