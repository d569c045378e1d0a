"""`reliability status [--watch [SECONDS]] [--json] [--direct]`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from reliability.cli_support import (
    EXIT_FAILED,
    BadInput,
    config_option,
    console,
    direct_option,
    finish,
    from_daemon,
    json_option,
    print_json,
)
from reliability.config import Config, ConfigError
from reliability.readapi import STATUS_PATH
from reliability.status.render import render

if TYPE_CHECKING:
    from reliability.status.gather import StatusReader

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
    "then covers the last 5 minutes. Reads directly.",
)
@click.option(
    "--metrics-url",
    default=None,
    metavar="URL",
    help="Read this daemon's /metrics only, directly (default: every live cluster member's, "
    "else the config's http.listen).",
)
@direct_option
@config_option(domain_checks=False)
@json_option
def status(
    config: Config, watch: float | None, metrics_url: str | None, direct: bool, as_json: bool
) -> None:
    """One screen for on-call: nodes (up or down, GPUs seen/expected, pool, role) and
    endpoints (error ratio, p95 latency) from the daemons' /metrics; open incidents and
    running and recent runbook runs from the database. Only reads.

    The running daemon (at the config's http.listen) answers for all of it when it can;
    else, or with --direct, this command reads the database and every live cluster
    member's /metrics itself. With several daemons each collects its share of the fleet:
    the screen merges them and names a member that does not answer (its share unknown).

    A daemon or database that does not answer is shown as such, in one line, and the rest
    is still shown. Latencies are p95 since the daemon started (over the last 5 minutes
    under --watch, once it has watched for a minute).

    Exit status: 0 when all is fine; 1 when something needs attention, each listed under
    the header and in the JSON's "attention": a daemon or the database not answering, a
    node down or with GPUs lost or unreadable, an unresolved critical incident, a run
    interrupted or whose undo failed, a running run with no heartbeat for 60 s, or a run
    that failed or was aborted in the last hour. Endpoint errors count once their rule
    opens an incident. --watch exits 0 on Ctrl-C; with --json it is refused (exit 2).
    """
    if as_json and watch is not None:
        raise BadInput("--json prints one document; it cannot be combined with --watch")
    document = None
    if watch is None and metrics_url is None and not direct:
        document = from_daemon(config, STATUS_PATH)
    if document is None:
        reader = _reader(config, metrics_url, watch=watch is not None)
        try:
            if watch is not None:
                _watch(reader, watch)
                return
            document = _read(reader)
        finally:
            reader.close()
    if as_json:
        print_json(document)
    else:
        console.print(render(document, width=console.width))
    finish(0 if document["ok"] else EXIT_FAILED)


def _reader(config: Config, metrics_url: str | None, *, watch: bool) -> StatusReader:
    """This process reads the database and the daemons' /metrics itself."""
    from reliability.status.gather import StatusReader
    from reliability.status.scrape import LatencyWindow

    try:
        database_url = config.database_url()
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    return StatusReader(
        config,
        metrics_url=metrics_url,
        database_url=database_url,
        window=LatencyWindow() if watch else None,
    )


def _read(reader: StatusReader) -> dict[str, Any]:
    from reliability.status.gather import document

    return document(reader.read())


def _watch(reader: StatusReader, refresh: float) -> None:
    """Redraw until Ctrl-C. Reads run in this thread: a slow one delays the next redraw,
    never stacks (each has its own deadline)."""
    from rich.live import Live

    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                started = time.monotonic()
                screen = render(_read(reader), width=console.width, refresh=refresh)
                live.update(screen, refresh=True)
                time.sleep(max(refresh - (time.monotonic() - started), 0.0))
    except KeyboardInterrupt:
        pass
