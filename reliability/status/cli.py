"""`reliability status [--watch [SECONDS]] [--json]`."""

from __future__ import annotations

import time

import click
from rich.live import Live

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
from reliability.status.gather import StatusReader
from reliability.status.render import render, to_json
from reliability.status.scrape import LatencyWindow, metrics_url

DEFAULT_REFRESH = 2.0
MIN_REFRESH, MAX_REFRESH = 1.0, 300.0


@click.command(short_help="One screen for on-call: nodes, endpoints, open incidents, runbook runs.")
@click.option(
    "--watch",
    type=click.FloatRange(MIN_REFRESH, MAX_REFRESH),
    is_flag=False,
    flag_value=DEFAULT_REFRESH,
    default=None,
    metavar="[SECONDS]",
    help=f"Redraw in place every SECONDS (default {DEFAULT_REFRESH:g}) until Ctrl-C; p95 "
    "then covers the last 5 minutes.",
)
@click.option(
    "--metrics-url",
    default=None,
    metavar="URL",
    help="The daemon's /metrics (default: from the config's http.listen).",
)
@config_option(domain_checks=False)
@json_option
def status(config: Config, watch: float | None, metrics_url: str | None, as_json: bool) -> None:
    """One screen for on-call: nodes (up or down, GPUs seen/expected, pool, role) and
    endpoints (error ratio, p95 latency) from the running daemon's /metrics; open incidents
    and running and recent runbook runs from the database. Only reads.

    A daemon or database that does not answer is shown as such, in one line, and the rest
    is still shown. Latencies are p95 since the daemon started (over the last 5 minutes
    under --watch, once it has watched for a minute).

    Exit status: 0 when all is fine; 1 when something needs attention, each listed under
    the header and in the JSON's "attention": the daemon or the database not answering, a
    node down or with GPUs lost or unreadable, an unresolved critical incident, a run
    interrupted or whose undo failed, a running run with no heartbeat for 60 s, or a run
    that failed or was aborted in the last hour. Endpoint errors count once their rule
    opens an incident. --watch exits 0 on Ctrl-C; with --json it is refused (exit 2).
    """
    if as_json and watch is not None:
        raise BadInput("--json prints one document; it cannot be combined with --watch")
    try:
        database_url = config.database_url()
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    reader = StatusReader(
        config,
        metrics_url=metrics_url or _default_url(config),
        database_url=database_url,
        window=LatencyWindow() if watch is not None else None,
    )
    try:
        if watch is not None:
            _watch(reader, watch)
            return
        current = reader.read()
    finally:
        reader.close()
    if as_json:
        print_json(to_json(current))
    else:
        console.print(render(current, width=console.width))
    finish(0 if current.ok else EXIT_FAILED)


def _default_url(config: Config) -> str:
    return metrics_url(config.http.listen)


def _watch(reader: StatusReader, refresh: float) -> None:
    """Redraw until Ctrl-C. Reads run in this thread: a slow one delays the next redraw,
    never stacks (each has its own deadline)."""
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                started = time.monotonic()
                screen = render(reader.read(), width=console.width, refresh=refresh)
                live.update(screen, refresh=True)
                time.sleep(max(refresh - (time.monotonic() - started), 0.0))
    except KeyboardInterrupt:
        pass
