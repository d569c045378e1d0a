"""Benchmark `incidents.service.open_or_update` on SQLite and PostgreSQL.

    .venv/bin/python bench/incidents.py [--n N] [--pg-url URL] [--time-cap SECONDS]

Scenarios: (a) every call a new fingerprint (opens), (b) every call the same fingerprint
(refires). Each call is its own session and transaction, committed, in one process: the
shape of webhook intake. SQLite runs on a file in a temporary directory; PostgreSQL on a
database created for the run (and dropped after it) on the server at --pg-url.
Targets: >= 5,000 upserts/s on SQLite, >= 2,000/s on PostgreSQL, p99 < 10 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from reliability import db
from reliability.incidents import service

DEFAULT_PG_URL = os.environ.get(
    "RELIABILITY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
WARMUP = 200


@dataclass(frozen=True)
class Result:
    backend: str
    scenario: str
    ops: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float


def run_scenario(
    factory: sessionmaker[Session], fingerprint: Callable[[int], str], n: int, time_cap: float
) -> tuple[int, float, list[float]]:
    """Up to n upserts (stopping early at time_cap seconds); (ops, elapsed s, latencies ms)."""
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + time_cap
    for i in range(n):
        t0 = time.perf_counter()
        with factory.begin() as session:
            service.open_or_update(
                session,
                fingerprint=fingerprint(i),
                title="GPU 0 on node1 reported XID 79",
                severity="critical",
                source="bench",
                labels={"node": "node1", "gpu": "0"},
                at=datetime.now(UTC),
            )
        t1 = time.perf_counter()
        latencies.append((t1 - t0) * 1000)
        if t1 > deadline:
            break
    return len(latencies), time.perf_counter() - started, latencies


def bench_backend(backend: str, url: str, n: int, time_cap: float) -> list[Result]:
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        factory = db.session_factory(engine)
        # Warm the pool, the statement caches and (PostgreSQL) prepared statements.
        run_scenario(factory, lambda i: f"warmup:{i % 20}", WARMUP, time_cap)
        scenarios = {
            "new fingerprint": lambda i: f"new:{i}",
            "same fingerprint": lambda _i: "repeat",
        }
        results = []
        for name, fingerprint in scenarios.items():
            ops, elapsed, latencies = run_scenario(factory, fingerprint, n, time_cap)
            quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
            results.append(Result(backend, name, ops, ops / elapsed, quantiles[49], quantiles[98]))
        return results
    finally:
        engine.dispose()


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="reliability-bench-") as directory:
        yield f"sqlite:///{Path(directory) / 'bench.db'}"


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards."""
    engine = db.make_engine(server_url)
    server = engine.execution_options(isolation_level="AUTOCOMMIT")
    name = f"reliability_bench_{secrets.token_hex(4)}"
    try:
        with db.connect(server) as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(server.url).set(database=name).render_as_string(hide_password=False)
        finally:
            with db.connect(server) as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


def print_table(results: list[Result]) -> None:
    headers = ("backend", "scenario", "ops", "ops/s", "p50 ms", "p99 ms")
    rows = [
        (
            r.backend,
            r.scenario,
            str(r.ops),
            f"{r.ops_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print(
            "  ".join(
                cell.rjust(width) if i >= 2 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="upserts per scenario (default 2000)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server URL")
    parser.add_argument(
        "--time-cap", type=float, default=20.0, help="seconds per scenario at most (default 20)"
    )
    args = parser.parse_args(argv)

    results: list[Result] = []
    with sqlite_database() as url:
        results += bench_backend("sqlite", url, args.n, args.time_cap)
    try:
        with postgres_database(args.pg_url) as url:
            results += bench_backend("postgresql", url, args.n, args.time_cap)
    except db.DatabaseUnavailable as exc:
        print(f"postgresql skipped: {exc}", file=sys.stderr)
    # Numbers only compare on the same machine: say which one this was.
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLAlchemy {sa.__version__}")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
