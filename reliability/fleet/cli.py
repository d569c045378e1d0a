"""`reliability nodes ...`: the fleet as it is now (list), a node taken out by hand (out),
and a node put back once it passes its checks (return, the node-return runbook). Exit 2
for a node the config does not have, 1 for a change refused or a check that failed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from rich.table import Table

from reliability.cli_support import (
    BadInput,
    CommandFailed,
    config_option,
    console,
    database,
    json_option,
    print_json,
    who,
)
from reliability.config import Config, NodeConfig
from reliability.fleet import service
from reliability.fleet.models import FleetNode, State
from reliability.runbooks import cli as runbook_cli

RETURNS_FROM = (State.out, State.repair)


@click.group()
def nodes() -> None:
    """The fleet's live state: which node serves which pool, the standbys, who is out."""


def _node(config: Config, name: str) -> NodeConfig:
    try:
        node = config.node(name)
    except KeyError:
        known = ", ".join(n.name for n in config.nodes if n.first_state) or "none"
        raise BadInput(f"no node is named {name!r} in the config; fleet nodes: {known}") from None
    if node.first_state is None:
        raise BadInput(f"{name} is not a fleet node (role {node.role}): it serves no pool")
    return node


def _row(config: Config, name: str) -> FleetNode:
    with database(config) as s:
        service.seed(s, config=config, now=datetime.now(UTC))
        return service.get(s, node=name)


def described(row: FleetNode) -> str:
    where = f" {row.pool}" if row.pool and row.state == State.serving else ""
    return f"{row.state.value}{where}"


def _json(row: FleetNode) -> dict[str, object]:
    keys = ("node", "service", "pool", "since", "by", "run_id", "reason")
    return {"state": row.state.value, **{k: getattr(row, k) for k in keys}}


@nodes.command("list")
@config_option
@json_option
def list_(config: Config, as_json: bool) -> None:
    """Every fleet node: its state, the service and pool it serves, since when, by whom."""
    with database(config) as s:
        service.seed(s, config=config, now=datetime.now(UTC))
        rows = service.nodes(s, config=config)
    if as_json:
        print_json([_json(r) for r in rows])
        return
    table = Table(box=None, header_style="bold")
    for col in ("NODE", "STATE", "SERVICE", "POOL", "SINCE", "BY", "REASON"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.node,
            r.state.value,
            r.service or "",
            r.pool or "",
            f"{r.since:%Y-%m-%d %H:%M:%S}Z",
            r.by,
            r.reason or "",
        )
    if rows:
        console.print(table)
    else:
        console.print("No fleet nodes in the config (nodes with role serving or standby).")


@nodes.command()
@click.argument("name", metavar="NODE")
@click.option("--reason", required=True, help="Why, for whoever reads the fleet next.")
@click.option("--yes", is_flag=True, help="Take it out without asking.")
@config_option
@json_option
def out(config: Config, name: str, reason: str, yes: bool, as_json: bool) -> None:
    """Take a standby (or a node in repair) out of the fleet: no runbook selects it until
    `nodes return`. A serving node is failed over instead, which marks it out."""
    _node(config, name)
    row = _row(config, name)
    if row.state == State.serving:
        raise CommandFailed(
            f"{name} serves pool {row.pool} of {row.service}: fail it over, which marks it "
            f"out: `reliability runbook run node-failover --param node={name}`"
        )
    if row.state == State.out:
        raise CommandFailed(f"{name} is already out (since {row.since:%H:%M:%S}Z, {row.reason})")
    prompt = f"Take {name} ({described(row)}) out of the fleet?"
    if not yes and not (sys.stdin.isatty() and click.confirm(prompt, default=False)):
        raise CommandFailed("not changed: answer yes at a terminal, or pass --yes")
    with database(config) as s:
        try:
            row = service.set_state(
                s,
                node=name,
                state="out",
                service=row.service,
                pool=row.pool,
                reason=reason,
                by=who(),
                at=datetime.now(UTC),
                expect=service.Seen(row.state.value, row.pool),
            )
        except service.StateChanged as exc:
            raise CommandFailed(f"not changed: {exc}") from None
        shown = _json(row)
    if as_json:
        print_json(shown)
        return
    console.print(f"{name} is out: {reason}", markup=False)


@nodes.command("return")
@click.argument("name", metavar="NODE")
@click.option(
    "--service",
    "service_name",
    default=None,
    help="The service whose health and completion it must pass (default: the one it served).",
)
@click.option(
    "--warm",
    is_flag=True,
    help="Run the service's known-good image on it first: a failover onto it skips the deploy.",
)
@config_option
@json_option
def return_(config: Config, name: str, service_name: str | None, warm: bool, as_json: bool) -> None:
    """Check a node that is out or in repair (health, a one-token completion) and put it
    back as a standby (`--warm`: a warm standby): the node-return runbook. A node failing
    its checks stays out."""
    node = _node(config, name)
    row = _row(config, name)
    if row.state not in RETURNS_FROM:
        raise CommandFailed(
            f"{name} is {described(row)}; only a node that is out or in repair returns"
        )
    chosen = service_name or row.service or _config_service(config, node)
    if chosen is None:
        raise BadInput(f"{name} served no service; name the one to check it with: --service NAME")
    params = (f"node={name}", f"service={chosen}", f"warm={'yes' if warm else 'no'}")
    click.get_current_context().invoke(
        runbook_cli.run,
        config_path=config.source,
        name="node-return",
        param_items=params,
        yes=True,
        incident=None,
        as_json=as_json,
    )


def _config_service(config: Config, node: NodeConfig) -> str | None:
    found = config.pool_service(node.pool) if node.pool else None
    if found is not None:
        return found.name
    return config.services[0].name if len(config.services) == 1 else None
