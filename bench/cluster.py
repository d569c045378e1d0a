"""Benchmark several daemons on one PostgreSQL: the same work on 1, 2 and 3 members.

    .venv/bin/python bench/cluster.py [--endpoints N] [--down D] [--interval S] [--rounds R]

Each member is a real `reliability daemon` process (reliability/testing/cluster.py) with
the default heartbeat (2s) and lease (6s), probing its share of `--endpoints` HTTP
endpoints (`--down` of them refuse, so each is an incident paged to a Slack stand-in).
Per member count it reports the CPU each member used over `--cpu-seconds` once the shares
settled, then (from two members) kills one member with SIGKILL `--rounds` times, the
leader among them, and times until the others collect every endpoint again; the killed
member is started again each round. Duplicate pages: Slack root messages beyond one per
incident (each root names its incident). Every wait is bounded.

Targets: takeover < 15 s; each of N members uses at most 1/N of one daemon's CPU plus
20 %; no duplicate page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from reliability import db
from reliability.testing.cluster import (
    TARGET_UP,
    HealthyServer,
    Member,
    endpoints,
    start_member,
    wait_for,
    write_config,
)
from reliability.testing.loopback import free_port
from reliability.testing.slack import SlackStandIn

TAKEOVER_TARGET_S = 15.0
CPU_MARGIN = 0.20
SETTLE_TIMEOUT_S = 120.0
TOKEN_ENV = "RELIABILITY_BENCH_SLACK_TOKEN"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    members: int
    cpu_percent: list[float]
    takeovers: list[float] = field(default_factory=list)
    duplicates: int = 0
    incidents: int = 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def incident_of(message: str) -> str:
    """The incident a root message is about (its footer names it), else the message."""
    found = re.search(r"Incident #(\d+)", message)
    return found.group(1) if found else message


def api_targets(member: Member) -> set[str]:
    """The endpoints `member` reports now, from its target_up lines only: a full parse of
    3,000 endpoints' series takes seconds, which would add to each takeover read."""
    text = member.get("/metrics", timeout=10.0).text
    lines = [line for line in text.splitlines() if line.startswith(TARGET_UP + "{")]
    return {
        s.labels["target"]
        for family in text_string_to_metric_families("\n".join(lines) + "\n")
        for s in family.samples
        if s.labels.get("collector") == "api"
    }


def collected(members: list[Member]) -> list[set[str]]:
    return [api_targets(m) for m in members]


def split(members: list[Member], names: set[str]) -> bool:
    shares = collected(members)
    return set().union(*shares) == names and sum(map(len, shares)) == len(names)


def new_database(server_url: str) -> str:
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"reliability_bench_{secrets.token_hex(4)}"
    with server.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    server.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    return url


def drop_database(server_url: str, url: str) -> None:
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    server.dispose()


def run(count: int, args: argparse.Namespace, server: HealthyServer, work: Path) -> Result:
    url = new_database(args.pg_url)
    eps = endpoints(server.url, args.endpoints - args.down, args.down, interval=args.interval)
    names = {e["name"] for e in eps}
    members: list[Member] = []
    with SlackStandIn() as slack:
        os.environ[TOKEN_ENV] = slack.token
        section = {"token_env": TOKEN_ENV, "channel": "#alerts", "base_url": slack.api_url}

        def start(member_id: str) -> Member:
            port = free_port()
            config = write_config(
                work / f"{count}-{member_id}-{port}.yaml",
                database_url=url,
                member_id=member_id,
                port=port,
                endpoints=eps,
                slack=section,
                heartbeat=2.0,
                lease=6.0,
            )
            return start_member(config, member_id, port, work)

        try:
            members = [start(f"m{i}") for i in range(count)]
            wait_for("shares", lambda: split(members, names), SETTLE_TIMEOUT_S, members)
            wait_for("pages", lambda: len(slack.messages()) >= args.down, SETTLE_TIMEOUT_S, members)
            before = {m.member_id: cpu_seconds(m.proc.pid) for m in members}
            time.sleep(args.cpu_seconds)
            used = [cpu_seconds(m.proc.pid) - before[m.member_id] for m in members]
            result = Result(count, [100 * u / args.cpu_seconds for u in used])
            for round_ in range(args.rounds if count > 1 else 0):
                leaders = [m for m in members if m.gauge("reliability_cluster_leader") == 1]
                victim = leaders[0] if round_ % 2 == 0 and leaders else members[round_ % count]
                victim.kill()
                killed = time.monotonic()
                survivors = [m for m in members if m is not victim]
                wait_for("takeover", lambda s=survivors: split(s, names), 60.0, survivors)
                result.takeovers.append(time.monotonic() - killed)
                members[members.index(victim)] = start(victim.member_id)
                wait_for("rejoined", lambda: split(members, names), SETTLE_TIMEOUT_S, members)
            roots = Counter(incident_of(m.text + json.dumps(m.blocks)) for m in slack.messages())
            result.incidents = len(roots)
            result.duplicates = sum(n - 1 for n in roots.values())
            return result
        finally:
            for m in members:
                m.stop()
            drop_database(args.pg_url, url)


def print_table(results: list[Result], args: argparse.Namespace) -> bool:
    single = statistics.mean(results[0].cpu_percent) if results else 0.0
    print(
        f"\n{args.endpoints} endpoints every {args.interval} ({args.down} refusing), "
        f"CPU over {args.cpu_seconds:g}s, {args.rounds} SIGKILL rounds per cluster"
    )
    header = (
        f"{'members':>7}  {'CPU/member %':>13}  {'target %':>9}  {'takeover p50':>12}  "
        f"{'max':>6}  {'target':>6}  {'dup pages':>9}  ok"
    )
    print(header)
    print("-" * len(header))
    every_ok = True
    for r in results:
        cpu = max(r.cpu_percent)
        limit = single / r.members * (1 + CPU_MARGIN)
        p50 = statistics.median(r.takeovers) if r.takeovers else None
        worst = max(r.takeovers) if r.takeovers else None
        ok = (
            (r.members == 1 or cpu <= limit)
            and (worst is None or worst < TAKEOVER_TARGET_S)
            and r.duplicates == 0
        )
        every_ok &= ok
        print(
            f"{r.members:>7}  {cpu:>13.1f}  {limit:>9.1f}  "
            f"{'-' if p50 is None else f'{p50:.1f}s':>12}  "
            f"{'-' if worst is None else f'{worst:.1f}s':>6}  {'<15s':>6}  "
            f"{r.duplicates:>9}  {'yes' if ok else 'NO'}"
        )
    return every_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=3000)
    parser.add_argument("--down", type=int, default=20)
    parser.add_argument("--interval", default="15s")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--members", default="1,2,3")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RELIABILITY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, HealthyServer() as server:
        for count in (int(n) for n in args.members.split(",")):
            results.append(run(count, args, server, Path(tmp)))
            print(f"{count} member(s) done", file=sys.stderr)
    return 0 if print_table(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
