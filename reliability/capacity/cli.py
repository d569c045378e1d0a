"""`reliability capacity test|list` and `reliability cost report`.

Exit 2 for an unknown service or pool, an unbounded test, a pool carrying more production
traffic than the config allows, or a missing extra (locust, matplotlib); exit 1 when the
load generator failed or no step held the objectives (the test is recorded all the same).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reliability.capacity import flows, measure, service
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
from reliability.config import Config, ServiceConfig
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
    as_json: bool,
) -> None:
    """Step a pool's load up to find the most requests/s it serves within the service's
    objectives (TTFT and end-to-end p95, error ratio); record it as the pool's baseline."""
    try:
        svc = flows.find_service(config, service_name)
        flows.check_pool(svc, pool)
        flows.check_allowed(svc, pool)
    except (flows.UnknownTarget, measure.LoadRefused) as exc:
        raise BadInput(str(exc)) from None
    if problem := measure.missing_extra("locust"):
        raise BadInput(problem)
    with database(config) as s:
        targets = flows.pool_targets(
            s, config=config, service=svc, pool=pool, now=datetime.now(UTC)
        )
    try:
        model = flows.served_model(svc, next(iter(targets.values()))) if targets else ""
        plan = measure.plan_for(
            svc,
            list(targets.values()),
            model=model,
            users=users,
            spawn_rate=spawn_rate,
            duration=duration,
            steps=steps,
        )
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
@config_option
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
