"""The `reliability` command: mounts each domain's own command group.

Each domain's group is imported only when it runs (or its help is asked for): the list
below holds what `reliability --help` shows of it, so a command starts without loading the
others (tests/test_cli_imports.py keeps the list true and the import graph small).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from typing import TYPE_CHECKING

import click

from reliability import __version__
from reliability.cli_support import (
    EXIT_FAILED,
    BadInput,
    config_option,
    console,
    finish,
    json_option,
    print_json,
)

if TYPE_CHECKING:
    from reliability.config import Config

# name -> (module, attribute, what `--help` lists of it: its `help`, which click shortens,
# or its own `short_help`)
DOMAIN_COMMANDS: dict[str, tuple[str, str, dict[str, str]]] = {
    "capacity": (
        "reliability.capacity.cli",
        "capacity",
        {"help": "Measured capacity: load-test a pool within its objectives, keep its baseline."},
    ),
    "cluster": (
        "reliability.cluster.cli",
        "cluster",
        {"help": "Several daemons on one PostgreSQL database: members, leader, shares."},
    ),
    "cost": (
        "reliability.capacity.cli",
        "cost",
        {"help": "The cost of serving: self-hosted pools against the hosted API."},
    ),
    "dashboards": (
        "reliability.dashboards.cli",
        "dashboards",
        {"help": "Grafana dashboards as code (dashboards/*.dashboard.py)."},
    ),
    "demo": (
        "reliability.demo.cli",
        "demo",
        {
            "help": "Run a demo fleet on loopback with the daemon watching it (no GPU, no "
            "root, no sshd)."
        },
    ),
    "images": (
        "reliability.images.cli",
        "images",
        {"help": "Known-good images: every deploy, and the digests rollbacks and failovers use."},
    ),
    "incidents": (
        "reliability.incidents.cli",
        "incidents",
        {"help": "Incidents: list, show, open, acknowledge, resolve, silence."},
    ),
    "maintenance": (
        "reliability.maintenance.cli",
        "maintenance",
        {"help": "Maintenance windows: incidents in scope are recorded but page nobody."},
    ),
    "nodes": (
        "reliability.fleet.cli",
        "nodes",
        {"help": "The fleet's live state: which node serves which pool, the standbys, who is out."},
    ),
    "notify": (
        "reliability.notify.cli",
        "notify",
        {"help": "Notifications: check that pages reach on-call."},
    ),
    "oncall": (
        "reliability.oncall.cli",
        "oncall",
        {"help": "Who is on call: the rotation, its shifts, and overrides."},
    ),
    "rules": (
        "reliability.detect.cli",
        "rules",
        {"help": "Detection rules for Prometheus and Alertmanager."},
    ),
    "runbook": (
        "reliability.runbooks.cli",
        "runbook",
        {"help": "Runbooks: list, show, plan, run; a run's status, history, resume and undo."},
    ),
    "status": (
        "reliability.status.cli",
        "status",
        {"short_help": "One screen for on-call: nodes, endpoints, open incidents, runbook runs."},
    ),
}


def listed(name: str) -> click.Command:
    """What `--help` lists of domain command `name`, without importing its module."""
    return click.Command(name, **DOMAIN_COMMANDS[name][2])


class _Commands(click.Group):
    """The top-level group: its own commands, and each domain's group from
    DOMAIN_COMMANDS, imported when it is needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *DOMAIN_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in DOMAIN_COMMANDS and name not in self.commands:
            module, attribute, _ = DOMAIN_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists them, without importing a domain to read its short help."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in DOMAIN_COMMANDS and name not in self.commands:
                rows.append((name, listed(name).get_short_help_str(limit)))
            elif (command := self.get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="reliability")
def main() -> None:
    """Keep self-hosted LLM serving up: collect GPU, node and API health, open incidents,
    alert on-call in Slack, and run the runbook that fixes it."""


@main.group("config")
def config_group() -> None:
    """Validate the configuration."""


@config_group.command("check")
@click.option(
    "--skip-secrets", is_flag=True, help="Do not require the secrets' variables and files."
)
@config_option
@json_option
def config_check(config: Config, skip_secrets: bool, as_json: bool) -> None:
    """Validate the config file, every secret it names and every runbook of `runbooks_dir`;
    print a one-line summary."""
    from reliability.config import ConfigError
    from reliability.runbooks.load import load_runbooks

    issues = [] if skip_secrets else config.secret_issues()
    # No runbooks_dir here (a config written for another host): nothing to check.
    with contextlib.suppress(ConfigError):
        issues += load_runbooks(config).problems
    if issues:
        raise BadInput("\n".join(issues))
    summary = {
        "file": str(config.source) if config.source else None,
        "nodes": len(config.nodes),
        "services": len(config.services),
        "endpoints": len(config.endpoints),
        "rules": len(config.rules.custom),
        "builtin_rules": config.rules.builtin,
    }
    if as_json:
        print_json(summary)
        return
    where = config.source or "built-in defaults (no config file)"
    console.print(
        f"{where}: OK: {summary['nodes']} nodes, {summary['services']} services, "
        f"{summary['endpoints']} endpoints, {summary['rules']} custom rules"
        f"{' + built-in rules' if config.rules.builtin else ''}"
    )


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@config_option
def db_upgrade(config: Config) -> None:
    """Create or migrate the database schema to this version of reliability."""
    from reliability import db
    from reliability.config import ConfigError

    try:
        url = config.database_url()
        before, after = db.upgrade(url)
    except (db.DatabaseError, ConfigError) as exc:
        raise BadInput(str(exc)) from None
    target = db.mask_url(url)
    if before == after:
        console.print(f"{target}: already at schema {after}")
    else:
        console.print(f"{target}: upgraded schema {before or 'empty'} -> {after}")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell's completion script for reliability: add
    `eval "$(reliability completion bash)"` to ~/.bashrc (zsh: ~/.zshrc)."""
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # click knows the three choices
    click.echo(complete(main, {}, "reliability", "_RELIABILITY_COMPLETE").source())


# Libraries that log every request or job at INFO: a line per probe buries what matters.
CHATTY_LOGGERS = ("httpx", "apscheduler", "alembic", "paramiko")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@main.command()
@click.option("--once", is_flag=True, help="Collect every target once, print a table, exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@config_option
@json_option
def daemon(config: Config, once: bool, verbose: bool, as_json: bool) -> None:
    """Run the collectors on their schedules and serve /metrics, /healthz, /readyz.

    With --once: exit 0 when every target answered, 1 otherwise.
    """
    from reliability import daemon as daemon_mod
    from reliability.daemon_report import print_outcomes

    _setup_logging(verbose)
    if once:
        # Quiet per-target warnings: the table says the same, once.
        logging.getLogger("reliability").setLevel(logging.ERROR)
    issues = config.secret_issues()
    if issues:
        raise BadInput("\n".join(issues))
    built = daemon_mod.build(config)
    if once:
        try:
            outcomes = daemon_mod.run_once(built)
        finally:
            built.close()
        print_outcomes(built.snapshot, outcomes, as_json=as_json)
        finish(0 if all(o.ok for o in outcomes) else EXIT_FAILED)
    finish(daemon_mod.serve(built))
