"""`reliability rules export`: the detection rules as a Prometheus rules file."""

from __future__ import annotations

from pathlib import Path

import click

from reliability.cli_support import config_option, console, err_console
from reliability.config import Config
from reliability.detect.prometheus import export


@click.group("rules")
def rules() -> None:
    """Detection rules for Prometheus and Alertmanager."""


@rules.command("export")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the rules file here (default: standard output).",
)
@config_option
def rules_export(config: Config, out: Path | None) -> None:
    """Write the active rules (built-in and custom) as Prometheus alerting rules, and the
    alerts that watch the daemons (down, no leader, database down, an always-firing
    Watchdog for a dead man's switch)."""
    result = export(config)
    for name, reason in result.skipped.items():
        err_console.print(f"not exported: {name}: {reason}")
    if out is None:
        click.echo(result.text, nl=False)
        return
    out.write_text(result.text, encoding="utf-8")
    console.print(
        f"{out}: {len(result.alerts)} alerting rules, "
        f"{len(result.watching)} watching the daemons themselves"
    )
