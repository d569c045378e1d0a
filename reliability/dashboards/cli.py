"""`reliability dashboards build|push`: render the dashboard sources, upload them to Grafana."""

from __future__ import annotations

from pathlib import Path

import click

from reliability.cli_support import BadInput, CommandFailed, config_option, console, err_console
from reliability.config import Config, ConfigError
from reliability.dashboards import build as build_mod
from reliability.dashboards import push as push_mod

src_option = click.option(
    "--src",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of *.dashboard.py sources (default: dashboards.src, beside the config file).",
)


def _build(src: Path | None, config: Config) -> list[build_mod.Built]:
    try:
        return build_mod.build_all(src or config.dashboards_path(), config.dashboards)
    except build_mod.DashboardError as exc:
        raise CommandFailed(str(exc)) from None


@click.group("dashboards")
def dashboards() -> None:
    """Grafana dashboards as code (dashboards/*.dashboard.py)."""


@dashboards.command("build")
@src_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/dashboards"),
    show_default=True,
    help="Folder the JSON files are written to.",
)
@config_option
def build(config: Config, src: Path | None, out: Path) -> None:
    """Write each dashboard as <uid>.json; the same sources and config give byte-identical
    files. The config's `dashboards` section sets what the dashboards take from it (the
    energy price per kWh)."""
    for path in build_mod.write_all(_build(src, config), out):
        console.print(str(path))


@dashboards.command("push")
@src_option
@click.option("--url", help="Grafana's base URL (default: dashboards.grafana_url).")
@config_option
def push(config: Config, src: Path | None, url: str | None) -> None:
    """Upload every dashboard to Grafana, overwriting, in the folder `dashboards.folder_uid`.

    One line per dashboard; exit 1 if any was not pushed.
    """
    settings = config.dashboards
    url = url or (str(settings.grafana_url) if settings.grafana_url else None)
    if not url:
        raise BadInput("no Grafana URL: pass --url or set dashboards.grafana_url")
    try:
        token = config.grafana_token()
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if token is None:
        raise BadInput("dashboards.token_env is not set: name the variable holding the token")
    built = _build(src, config)
    with push_mod.client(url, token.get_secret_value()) as http:
        results = push_mod.push_all(http, built, settings.folder_uid)
    for result in results:
        (console if result.ok else err_console).print(result.line())
    failed = [r.uid for r in results if not r.ok]
    if failed:
        raise CommandFailed(f"{len(failed)} of {len(results)} dashboards not pushed")
