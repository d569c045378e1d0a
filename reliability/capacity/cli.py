"""`reliability capacity test|list` and `reliability cost report`.

Exit 2 for an unknown service or pool, an unbounded test, a pool carrying more production
traffic than the config allows (or whose share the balancer's file cannot tell), or a
missing extra (locust, matplotlib); exit 1 when the
load generator failed or no step held the objectives (the test is recorded all the same).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reliability.capacity import cost as cost_model
from reliability.capacity import service
from reliability.capacity.cost import Report
from reliability.capacity.models import CapacityTest, Purpose
from reliability.capacity.plan import Plan
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
from reliability.config import Config, NodeConfig, ServiceConfig
from reliability.durations import parse_duration


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _watts(watts: float | None) -> str:
    return "-" if watts is None else f"{watts:.0f} W"


@click.group()
def capacity() -> None:
    """Measured capacity: load-test a pool within its objectives, keep its baseline."""


@capacity.command("test")
@click.argument("service_name", metavar="SERVICE")
@click.option("--pool", required=True, help="The pool to load (not the active one, by default).")
@click.option("--users", type=int, default=32, show_default=True, help="Concurrent users, at most.")
@click.option(
    "--spawn-rate", type=float, default=10.0, show_default=True, help="Users started per second."
)
@click.option(
    "--duration",
    default="2m",
    show_default=True,
    callback=_duration,
    help="The whole test, its steps included (e.g. 90s, 5m).",
)
@click.option(
    "--steps", type=int, default=8, show_default=True, help="Steps of users up to --users."
)
@click.option(
    "--allow-unknown-share",
    is_flag=True,
    help="Test even when the balancer's file cannot be read to tell the pool's share of "
    "production traffic (a known share above the allowed one is still refused).",
)
@config_option
@json_option
def test(
    config: Config,
    service_name: str,
    pool: str,
    users: int,
    spawn_rate: float,
    duration: float,
    steps: int,
    allow_unknown_share: bool,
    as_json: bool,
) -> None:
    """Step a pool's load up to find the most requests/s it serves within the service's
    objectives (TTFT and end-to-end p95, error ratio); record it as the pool's baseline.
    Refused when the service's balancer (its live weights, read over SSH) sends the pool
    more production traffic than `capacity.max_production_share`, or cannot be read."""
    from reliability.capacity import flows, measure  # the load test's own imports (httpx)

    try:
        svc = flows.find_service(config, service_name)
        flows.check_pool(svc, pool)
    except flows.UnknownTarget as exc:
        raise BadInput(str(exc)) from None
    if problem := measure.missing_extra("locust"):
        raise BadInput(problem)
    with database(config) as s:
        nodes = flows.pool_nodes(s, config=config, pool=pool, now=datetime.now(UTC))
    targets = flows.pool_targets(svc, nodes)
    try:
        plan = measure.plan_for(
            svc,
            list(targets.values()),
            model=svc.model or "",
            users=users,
            spawn_rate=spawn_rate,
            duration=duration,
            steps=steps,
        )  # the bounds first: the balancer is asked only about a test that may run
        _check_share(config, svc, pool, nodes, allow_unknown_share)
        if not plan.model:  # checked first: nothing is sent to a refused pool
            plan = replace(plan, model=flows.served_model(svc, plan.urls[0]))
    except measure.LoadRefused as exc:
        raise BadInput(str(exc)) from None
    except measure.LoadFailed as exc:
        raise CommandFailed(str(exc)) from None
    try:
        if as_json:
            result = flows.run_test(
                config, svc, pool, targets, plan, purpose=Purpose.baseline, by=who()
            )
        else:
            result = _with_progress(config, svc, pool, targets, plan)
    except measure.LoadFailed as exc:
        raise CommandFailed(str(exc)) from None
    with database(config) as s:
        service.record(s, test=result)
        previous = service.baseline(s, service=svc.name, pool=pool, before=result.id)
        shown = _as_dict(result), _as_dict(previous) if previous else None
        if not as_json:
            _print(result, previous)
    if as_json:
        print_json({"test": shown[0], "previous_baseline": shown[1]})
    if not result.held:
        raise CommandFailed(
            f"no step held {svc.name}'s objectives (services.{svc.name}.objectives); the "
            f"test is recorded, the baseline unchanged"
        )


def _check_share(
    config: Config, svc: ServiceConfig, pool: str, nodes: list[NodeConfig], allow_unknown: bool
) -> None:
    """LoadRefused unless the pool's share of production traffic is within the allowed
    one; a share that cannot be read refuses too, unless `allow_unknown` (said on stderr)."""
    from reliability.capacity import flows, measure
    from reliability.ssh import SshPool

    if svc.capacity.max_production_share >= 1.0:
        return  # any share is allowed: the balancer need not be asked
    ssh = SshPool()
    try:
        share = flows.production_share(config, svc, pool, nodes, ssh=ssh)
    except flows.ShareUnknown as exc:
        if not allow_unknown:
            raise measure.LoadRefused(
                f"pool {pool}'s share of {svc.name}'s production traffic is unknown: {exc}. "
                f"Refused, as a pool serving production may not be load-tested beyond "
                f"services.{svc.name}.capacity.max_production_share; pass "
                f"--allow-unknown-share if you know it serves none"
            ) from None
        click.echo(f"warning: production share unknown ({exc}); tested anyway", err=True)
        return
    finally:
        ssh.close()
    flows.check_allowed(svc, pool, share)


def _with_progress(
    config: Config, svc: ServiceConfig, pool: str, targets: dict[str, str], plan: Plan
) -> CapacityTest:
    total = plan.step_s * len(plan.steps)
    console.print(
        f"Loading {svc.name} pool {pool} ({len(targets)} nodes: {', '.join(targets)}) with "
        f"{', '.join(map(str, plan.steps))} users, {plan.step_s:.1f}s a step; model "
        f"{plan.model}, prompts of {plan.prompt_words} words, "
        f"{plan.stream_share:.0%} streamed"
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("starting", total=total)

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "progress":
                progress.update(
                    bar,
                    completed=data["step"] * plan.step_s + data["elapsed_s"],
                    description=f"step {data['step'] + 1}/{len(plan.steps)}: "
                    f"{data['users']} users, {data['requests']} requests, "
                    f"{data['failures']} failed",
                )
            elif kind == "step":
                verdict = "; ".join(data["missed"]) or "within objectives"
                progress.console.print(
                    f"  {data['users']:>4} users  {data['qps']:8.2f} req/s  "
                    f"e2e p95 {_ms(data['e2e_p95_s'])}  TTFT p95 {_ms(data['ttft_p95_s'])}  "
                    f"errors {data['error_ratio']:.1%}  {verdict}"
                )

        from reliability.capacity import flows

        return flows.run_test(
            config, svc, pool, targets, plan, purpose=Purpose.baseline, by=who(), on_event=on_event
        )


def _as_dict(t: CapacityTest) -> dict[str, Any]:
    keys = (
        "id", "service", "pool", "held", "users", "qps", "tokens_per_s", "ttft_p50_s",
        "ttft_p95_s", "e2e_p95_s", "error_ratio", "prompt_tokens", "completion_tokens",
        "gpu_power_watts", "nodes", "by", "steps",
    )  # fmt: skip
    return {
        "purpose": t.purpose.value,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        **{k: getattr(t, k) for k in keys},
    }


def _print(result: CapacityTest, previous: CapacityTest | None) -> None:
    table = Table(box=None, header_style="bold")
    for col in ("", "THIS TEST", "PREVIOUS BASELINE", "CHANGE"):
        table.add_column(col)

    def change(now: float | None, before: float | None) -> str:
        if now is None or not before:
            return ""
        return f"{(now - before) / before:+.0%}"

    rows = [
        ("requests/s", "qps", lambda v: f"{v:.2f}"),
        ("tokens/s", "tokens_per_s", lambda v: f"{v:.0f}"),
        ("TTFT p50", "ttft_p50_s", _ms),
        ("TTFT p95", "ttft_p95_s", _ms),
        ("e2e p95", "e2e_p95_s", _ms),
        ("errors", "error_ratio", lambda v: f"{v:.2%}"),
        ("users", "users", str),
        ("GPU power", "gpu_power_watts", _watts),
    ]
    for label, key, shown in rows:
        now = getattr(result, key)
        before = getattr(previous, key) if previous else None
        table.add_row(
            label,
            "-" if now is None else shown(now),
            "-" if before is None else shown(before),
            change(now, before) if key in ("qps", "tokens_per_s") else "",
        )
    when = f" (test {previous.id}, {previous.finished_at:%Y-%m-%d %H:%M})" if previous else ""
    held = "held" if result.held else "did not hold"
    console.print(
        f"{result.service} pool {result.pool}: test {result.id} {held} the objectives{when}"
    )
    console.print(table)
    if result.gpu_power_watts is None:
        console.print("GPU power: not measured (the daemon's /metrics had no GPU readings)")


@capacity.command("list")
@click.argument("service_name", metavar="SERVICE", required=False)
@config_option(domain_checks=False)
@json_option
def list_(config: Config, service_name: str | None, as_json: bool) -> None:
    """Each pool's baseline: the newest test that held the objectives."""
    with database(config) as s:
        rows = [_as_dict(t) for t in service.baselines(s, service=service_name)]
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for col in ("SERVICE", "POOL", "REQ/S", "TOKENS/S", "TTFT P95", "E2E P95", "NODES", "WHEN"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["service"],
            r["pool"],
            f"{r['qps']:.2f}",
            f"{r['tokens_per_s']:.0f}",
            _ms(r["ttft_p95_s"]),
            _ms(r["e2e_p95_s"]),
            str(r["nodes"]),
            f"{r['finished_at']:%Y-%m-%d %H:%M}",
        )
    console.print(table if rows else "No baseline yet: run `reliability capacity test`.")


@click.group()
def cost() -> None:
    """The cost of serving: self-hosted pools against the hosted API."""


@cost.command("report")
@click.option(
    "--qps", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True
)
@click.option(
    "--years", type=click.FloatRange(min=0, min_open=True, max=30), default=3.0, show_default=True
)
@click.option("--service", "service_name", help="Whose capacity baseline (default: the newest).")
@click.option("--pool", help="Whose baseline within the service (default: its newest).")
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("cost-report.png"),
    show_default=True,
    help="Where to write the PNG chart.",
)
@click.option("--no-chart", is_flag=True, help="Write no chart.")
@config_option
@json_option
def report(
    config: Config,
    qps: float,
    years: float,
    service_name: str | None,
    pool: str | None,
    chart: Path,
    no_chart: bool,
    as_json: bool,
) -> None:
    """Total cost of serving QPS requests/s for YEARS: self-hosted (hardware, staff,
    electricity, nodes from the capacity baseline) against the hosted API, with the
    break-even point; prices from the config's `cost` section."""
    from reliability.capacity import flows, measure

    try:
        if service_name is not None:
            svc = flows.find_service(config, service_name)
            if pool is not None:
                flows.check_pool(svc, pool)
    except flows.UnknownTarget as exc:
        raise BadInput(str(exc)) from None
    with database(config) as s:
        found = [
            b for b in service.baselines(s, service=service_name) if pool is None or b.pool == pool
        ]
        baseline = max(found, key=lambda b: b.id) if found else None
        if baseline is not None:
            s.expunge(baseline)
    r = cost_model.report(cost_model.inputs(config, baseline, qps=qps, years=years))
    written = None
    if not no_chart:
        if problem := measure.missing_extra("matplotlib"):
            r.missing.append(f"the chart: {problem}")
        else:
            from reliability.capacity import chart as chart_module

            chart_module.write(r, chart)
            written = str(chart)
    if as_json:
        print_json(_report_dict(r, baseline, written))
        return
    _print_report(r, baseline, written)


def _report_dict(r: Report, baseline: CapacityTest | None, chart: str | None) -> dict[str, Any]:
    keys = (
        "nodes", "hardware", "energy", "staff", "self_hosted", "hosted_per_request", "hosted",
        "break_even_qps", "break_even_month", "missing",
    )  # fmt: skip
    return {
        "inputs": asdict(r.inputs),
        "baseline": None
        if baseline is None
        else {"id": baseline.id, "service": baseline.service, "pool": baseline.pool},
        **{k: getattr(r, k) for k in keys},
        "chart": chart,
    }


def _print_report(r: Report, baseline: CapacityTest | None, chart: str | None) -> None:
    i = r.inputs
    cur = i.currency

    def money(v: float | None) -> str:
        return "?" if v is None else f"{cur} {v:,.0f}"

    source = (
        f"capacity baseline: {baseline.service} pool {baseline.pool}, test {baseline.id}: "
        f"{i.qps_per_node:.2f} requests/s per node"
        if baseline is not None and i.qps_per_node
        else "capacity baseline: none"
    )
    console.print(f"Cost of {i.qps:g} requests/s over {i.years:g} years ({source})")
    table = Table(box=None, header_style="bold")
    table.add_column("SELF-HOSTED")
    table.add_column("", justify="right")
    table.add_column("HOW")
    table.add_row("hardware", money(r.hardware), f"{r.nodes or '?'} nodes x {money(i.node_price)}")
    power = "?" if i.node_power_watts is None else f"{i.node_power_watts:,.0f} W"
    price = "?" if i.energy_price_per_kwh is None else f"{i.energy_price_per_kwh:g}"
    table.add_row(
        "electricity",
        money(r.energy),
        f"{power} per node x {price} per kWh x {i.years * 8760:,.0f} h",
    )
    table.add_row("staff", money(r.staff), f"{money(i.staff_per_month)} a month")
    table.add_row("total", money(r.self_hosted), "")
    console.print(table)
    per_request = "?" if r.hosted_per_request is None else f"{cur} {r.hosted_per_request:.6f}"
    tokens = (
        "?"
        if i.prompt_tokens is None
        else f"{i.prompt_tokens:g} prompt + {i.completion_tokens:g} completion tokens"
    )
    console.print(f"Hosted API: {money(r.hosted)} ({per_request} a request: {tokens})")
    if r.break_even_qps is None and r.self_hosted is not None and r.hosted is not None:
        console.print(
            "Break-even: none; a node costs more than the hosted API charges for the "
            "requests it serves, at any load"
        )
    if r.break_even_qps is not None:
        console.print(
            f"Break-even: self-hosting costs less above {r.break_even_qps:,.1f} requests/s"
        )
    if r.break_even_month is not None:
        console.print(
            f"At {i.qps:g} requests/s the hosted bill passes self-hosting in month "
            f"{r.break_even_month:.1f}"
        )
    elif r.self_hosted is not None and r.hosted is not None:
        console.print(f"At {i.qps:g} requests/s the hosted API stays cheaper")
    for name in r.missing:
        console.print(f"[yellow]missing:[/yellow] {name}")
    if chart:
        console.print(f"Chart: {chart}")
