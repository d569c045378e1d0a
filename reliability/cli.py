"""The `reliability` command: mounts each domain's own command group."""

from __future__ import annotations

import contextlib
import logging

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
from reliability.config import Config, ConfigError
from reliability.dashboards.cli import dashboards
from reliability.demo.cli import demo
from reliability.detect.cli import rules
from reliability.images.cli import images
from reliability.incidents.cli import incidents
from reliability.runbooks.cli import runbook
from reliability.runbooks.load import load_runbooks
from reliability.status.cli import status


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


main.add_command(dashboards)
main.add_command(demo)
main.add_command(incidents)
main.add_command(images)
main.add_command(runbook)
main.add_command(rules)
main.add_command(status)
