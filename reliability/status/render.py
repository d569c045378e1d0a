"""`reliability status` drawn for a terminal (rich, one line per row, fits 80 columns for a
small fleet) from its JSON document (`gather.document`), the same whether the daemon or
this process gathered it. Imports no database layer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from reliability import catalog
from reliability.incidents.render import SEVERITY_STYLE

Document = dict[str, Any]
MAX_ATTENTION_LINES = 4
MAX_INCIDENT_ROWS = 8
RUN_STYLE = {
    "running": "cyan",
    "succeeded": "green",
    "undone": "green",
    "failed": "red",
    "aborted": "yellow",
    "interrupted": "bold red",
    "undo_failed": "bold red",
}
# Error ratios from this share up are shown red, below it and above zero yellow.
RED_RATIO = 0.1
# An ellipsis column (a title, a reason) keeps at least this much of the width.
MIN_FLEXIBLE = 12


def render(status: Document, *, width: int, refresh: float | None = None) -> RenderableType:
    """The screen for a terminal `width` columns wide. `refresh` (seconds) is shown in the
    header under `--watch`."""
    parts: list[RenderableType] = [_header(status, refresh)]
    down = [d for d in status["daemons"] if not d["up"]]
    if len(down) == len(status["daemons"]):
        parts.extend(
            Text.assemble(
                (f"{_daemon(d)}: ", "bold"),
                (f"not answering at {d['url']}: {d['error']}", "red"),
                " (nodes and endpoints unknown)",
            )
            for d in down
        )
    else:
        nodes = status["nodes"]
        parts.append(_nodes(nodes, width) if nodes else Text("Nodes: none configured"))
        if status["endpoints"]:
            parts.append(_endpoints(status, width))
        parts.extend(
            Text.assemble(
                (f"{_daemon(d)}: ", "bold"),
                (f"not answering at {d['url']}: {d['error']}", "red"),
                " (its share of nodes and endpoints unknown)",
            )
            for d in down
        )
    database = status["database"]
    if not database["up"]:
        parts.append(Text.assemble(("database: ", "bold"), (database["error"], "red")))
    else:
        parts.append(_incidents(status, width))
        parts.append(_runs(status, width))
    return Group(*parts)


def _daemon(d: Document) -> str:
    return f"daemon {d['member']}" if d["member"] else "daemon"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _header(status: Document, refresh: float | None) -> RenderableType:
    at = _at(status["at"])
    line = Text.assemble(("reliability status", "bold"), f"  {at:%H:%M:%S}Z  ")
    attention = status["attention"]
    if status["ok"]:
        line.append("all fine", "bold green")
    else:
        line.append(f"NEEDS ATTENTION ({len(attention)})", "bold red")
    members = status["cluster"]["members"]
    if members is not None:
        line.append(f"  {members} daemon{'s' if members != 1 else ''}")
    if refresh is not None:
        line.append(f"  (every {refresh:g}s, Ctrl-C stops)", "dim")
    lines = [line]
    # The daemons' and the database's lines come first; each has its own line below.
    own = sum(not d["up"] for d in status["daemons"]) + (not status["database"]["up"])
    rest = attention[own:]
    shown = rest[:MAX_ATTENTION_LINES]
    lines.extend(Text(f"  - {a}", "red", no_wrap=True, overflow="ellipsis") for a in shown)
    if len(rest) > len(shown):
        lines.append(Text(f"  ... and {len(rest) - len(shown)} more (--json)", "red"))
    # Who a page reaches, below what needs attention.
    for p in status["on_call"]:
        who = f"{p['user_id']} ({p['name']})" if p["name"] else p["user_id"]
        by = f", override #{p['override_id']}" if p["override_id"] else ""
        lines.append(
            Text(
                f"  on call ({p['rotation']}): {who} until {_at(p['until']):%a %H:%M}Z{by}",
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    return Group(*lines)


def _table(title: str, *columns: str, ellipsis: tuple[str, ...] = ()) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        header_style="dim",
        pad_edge=False,
        padding=(0, 1),
    )
    for c in columns:
        if c in ellipsis:
            table.add_column(c, no_wrap=True, overflow="ellipsis", ratio=1)
        else:
            table.add_column(c, no_wrap=True)
    return table


def _fit(table: Table, width: int) -> Table:
    """Keep every column at its widest cell but the ellipsis ones, which share what is
    left of `width`: a narrow terminal shortens titles and reasons, never hides an id or
    a status."""
    fixed, flexible = 0, []
    for column in table.columns:
        if column.ratio:
            flexible.append(column)
            continue
        cells = [column.header, *column.cells]
        column.min_width = max(
            c.cell_len if isinstance(c, Text) else cell_len(str(c)) for c in cells
        )
        fixed += column.min_width
    gaps = 2 * (len(table.columns) - 1)  # padding (0, 1) without the outer edges
    for column in flexible:
        column.max_width = max((width - fixed - gaps) // len(flexible), MIN_FLEXIBLE)
    return table


def _nodes(nodes: list[Document], width: int) -> Table:
    table = _table("Nodes", "NODE", "STATE", "GPUS", "POOL", "ROLE")
    for n in nodes:
        table.add_row(n["name"], _node_state(n), _gpus(n), n["pool"] or "", n["role"] or "")
    return _fit(table, width)


def _node_state(n: Document) -> Text:
    if n["up"] is None:
        return Text("unknown", "dim")
    if not n["up"]:
        down_for = n["down_for_seconds"]
        since = f" {_span(down_for)}" if down_for is not None else ""
        return Text(f"down{since}", "bold red")
    return Text("up", "green")


def _gpus(n: Document) -> Text:
    expected = "?" if n["gpus_expected"] is None else str(n["gpus_expected"])
    if n["gpu_collect_failed"]:
        return Text(f"?/{expected} unreadable", "red")
    if n["gpus_visible"] is None:
        return Text(f"-/{expected}" if n["gpus_expected"] else "", "dim")
    text = f"{n['gpus_visible']}/{expected}"
    if n["gpus_lost"]:
        return Text(f"{text} ({n['gpus_lost']} lost)", "bold red")
    return Text(text)


def _endpoints(status: Document, width: int) -> Table:
    endpoints = status["endpoints"]
    covers = endpoints[0]["p95_window_seconds"]
    basis = "since the daemon started" if covers is None else f"over the last {_span(covers)}"
    table = _table(
        f"Endpoints (p95 {basis})", "ENDPOINT", "ROLE", "LAST", "ERR 1m", "5m", "BUSY 1m", "P95"
    )
    last = {True: ("ok", "green"), False: ("fail", "red"), None: ("-", "dim")}
    for e in endpoints:
        p95 = ", ".join(f"{probe} {_seconds(v)}" for probe, v in e["p95_seconds"].items())
        table.add_row(
            e["name"],
            e["role"] or "",
            Text(*last[e["last_probe_ok"]]),
            _ratio(e["error_ratio"].get("1m")),
            _ratio(e["error_ratio"].get("5m")),
            _ratio(e["overload_ratio"].get("1m")),
            p95 or Text("-", "dim"),
        )
    return _fit(table, width)


def _incidents(status: Document, width: int) -> RenderableType:
    incidents = status["incidents"]
    if not incidents:
        return Text.assemble(("Incidents: ", "bold"), ("none open", "green"))
    shown = incidents[:MAX_INCIDENT_ROWS]
    table = _table(
        f"Open incidents ({len(incidents)})",
        "ID",
        "SEV",
        "STATUS",
        "AGE",
        "TITLE",
        ellipsis=("TITLE",),
    )
    at = _at(status["at"])
    for i in shown:
        table.add_row(
            str(i["id"]),
            Text(i["severity"], SEVERITY_STYLE[i["severity"]]),
            _incident_status(i),
            _span((at - _at(i["started_at"])).total_seconds()),
            Text(i["title"]),
        )
    if len(incidents) > len(shown):
        more = len(incidents) - len(shown)
        table.add_row("", "", "", "", Text(f"... {more} more: reliability incidents list", "dim"))
    return _fit(table, width)


def _incident_status(i: Document) -> Text:
    if i["acknowledged_by"]:
        return Text(f"acked by {i['acknowledged_by']}", "yellow")
    return Text(i["status"], "red" if i["status"] == "open" else "yellow")


def _runs(status: Document, width: int) -> RenderableType:
    if not status["runs"]:
        return Text.assemble(("Runbook runs: ", "bold"), ("none yet", "dim"))
    table = _table(
        "Runbook runs",
        "ID",
        "RUNBOOK",
        "STATUS",
        "BY",
        "STARTED",
        "STEP / REASON",
        ellipsis=("STEP / REASON",),
    )
    at = _at(status["at"])
    for r in status["runs"]:
        running = r["status"] == "running"
        table.add_row(
            str(r["id"]),
            r["runbook"],
            _run_status(r),
            r["started_by"],
            f"{_span((at - _at(r['started_at'])).total_seconds())} ago",
            Text(r["reason"] or (f"at {r['step']}" if r["step"] and running else "")),
        )
    return _fit(table, width)


def _run_status(r: Document) -> Text:
    if r["no_heartbeat_seconds"] is not None:
        return Text(f"running? (no heartbeat for {r['no_heartbeat_seconds']:.0f}s)", "bold red")
    return Text(r["status"], RUN_STYLE.get(r["status"], ""))


def _ratio(value: float | None) -> Text:
    if value is None:
        return Text("-", "dim")
    style = "red" if value >= RED_RATIO else "yellow" if value > 0 else "green"
    return Text(f"{value:.0%}" if value == 0 or value >= 0.01 else "<1%", style)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    top = catalog.API_LATENCY_BUCKETS[-1]
    if value >= top:
        return f">{top:g}s"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _span(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
