"""Benchmark `incidents.flows.open_or_update` (incident, event, outbox row), SQLite and PostgreSQL.

    .venv/bin/python bench/incidents.py [--n N] [--pg-url URL] [--time-cap SECONDS]

Scenarios: (a) every firing a new fingerprint (opens), (b) every firing the same fingerprint
(refires). Each is run per call (`open_or_update`, one session and transaction per firing,
committed: the shape of a lone webhook alert) and batched (`open_or_update_many`, one
transaction per 10 or 100 firings: a rule evaluation cycle, a webhook of many alerts), all
in one process. ops/s counts firings; p50 and p99 are the latency of one transaction.
Floor rows time the cheapest transactions through the same session (one one-row INSERT; three,
as many rows as an upsert writes: incident, event, outbox row), and on PostgreSQL through the
bare driver, so the table shows what the database and the round trips alone allow; the
targets line names the floors next to each per-call target that the run missed. CPU/op is
this process's CPU time per firing (SQLite's work included, PostgreSQL's server not): unlike
ops/s it hardly depends on what else the machine runs. SQLite runs with the daemon's default
settings (`reliability/db.py`): WAL and synchronous=NORMAL, no fsync per commit, which stays
consistent but can lose the last commits to a power loss (`database.sqlite_synchronous: full`
syncs every commit instead).
SQLite runs on a file in a temporary directory; PostgreSQL on a database created for the run
(and dropped after it) on the server at --pg-url.
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from reliability import db
from reliability.incidents import flows, service

DEFAULT_PG_URL = os.environ.get(
    "RELIABILITY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TARGET_OPS_PER_S = {"sqlite": 5000, "postgresql": 2000}
TARGET_P99_MS = 10.0
BATCHES = (1, 10, 100)
# Batched rows run at least this many transactions, so that their p99 means something.
MIN_TRANSACTIONS = 100
WARMUP = 200
FLOOR = "floor:"


@dataclass(frozen=True)
class Result:
    backend: str
    scenario: str
    batch: int
    ops: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_op: float


FIRING = {
    "title": "GPU 0 on node1 reported XID 79",
    "severity": "critical",
    "source": "bench",
    "labels": {"node": "node1", "gpu": "0"},
}


def measure(
    backend: str,
    scenario: str,
    transaction: Callable[[range], None],
    *,
    n: int,
    batch: int,
    time_cap: float,
) -> Result:
    """Run `transaction` on consecutive ranges of `batch` firing numbers until n firings are
    done, or time_cap seconds have passed."""
    latencies: list[float] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + time_cap
    for first in range(0, n, batch):
        t0 = time.perf_counter()
        transaction(range(first, min(first + batch, n)))
        t1 = time.perf_counter()
        latencies.append((t1 - t0) * 1000)
        if t1 > deadline:
            break
    elapsed = time.perf_counter() - started
    cpu_us = (time.process_time() - cpu_started) * 1e6
    ops = min(len(latencies) * batch, n)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(
        backend, scenario, batch, ops, ops / elapsed, quantiles[49], quantiles[98], cpu_us / ops
    )


def upserts(
    factory: sessionmaker[Session], fingerprint: Callable[[int], str], batch: int
) -> Callable[[range], None]:
    """One transaction of the firings numbered `numbers`: per call when batch is 1."""

    def per_call(numbers: range) -> None:
        (number,) = numbers
        with factory.begin() as session:
            flows.open_or_update(
                session, fingerprint=fingerprint(number), at=datetime.now(UTC), **FIRING
            )

    def batched(numbers: range) -> None:
        firings = [
            service.Firing(fingerprint(number), at=datetime.now(UTC), **FIRING)
            for number in numbers
        ]
        with factory.begin() as session:
            flows.open_or_update_many(session, firings=firings)

    return per_call if batch == 1 else batched


def session_inserts(factory: sessionmaker[Session], rows: int) -> Callable[[range], None]:
    insert = sa.text("INSERT INTO bench_floor (n) VALUES (:n)")

    def transaction(numbers: range) -> None:
        with factory.begin() as session:
            for _ in range(rows):
                session.execute(insert, {"n": numbers[0]})

    return transaction


def driver_statement(connection: psycopg.Connection, sql: str) -> Callable[[range], None]:
    def transaction(_numbers: range) -> None:
        connection.execute(sql)
        connection.commit()

    return transaction


def bench_backend(backend: str, url: str, n: int, time_cap: float) -> list[Result]:
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE bench_floor (n integer)")
        factory = db.session_factory(engine)
        # Warm the pool, the statement caches and (PostgreSQL) prepared statements.
        for batch in BATCHES:
            warmup = upserts(factory, lambda i: f"warmup:{i % 20}", batch)
            measure(backend, "warmup", warmup, n=WARMUP * batch, batch=batch, time_cap=time_cap)
        scenarios = {
            "new fingerprint": lambda batch: lambda i: f"new:{batch}:{i}",
            "same fingerprint": lambda batch: lambda _i: f"repeat:{batch}",
        }
        results = []
        for batch in BATCHES:
            for name, fingerprints in scenarios.items():
                transaction = upserts(factory, fingerprints(batch), batch)
                ops = max(n, MIN_TRANSACTIONS * batch) if batch > 1 else n
                results.append(
                    measure(backend, name, transaction, n=ops, batch=batch, time_cap=time_cap)
                )
        floors = {
            f"{FLOOR} Session, INSERT + COMMIT": session_inserts(factory, 1),
            f"{FLOOR} Session, 3 INSERTs + COMMIT": session_inserts(factory, 3),
        }
        with ExitStack() as stack:
            if backend == "postgresql":
                params = make_url(url).translate_connect_args(username="user", database="dbname")
                driver = stack.enter_context(psycopg.connect(**params))
                floors[f"{FLOOR} psycopg, SELECT 1 + COMMIT"] = driver_statement(driver, "SELECT 1")
                floors[f"{FLOOR} psycopg, INSERT + COMMIT"] = driver_statement(
                    driver, "INSERT INTO bench_floor (n) VALUES (1)"
                )
            for name, transaction in floors.items():
                measure(backend, name, transaction, n=WARMUP, batch=1, time_cap=time_cap)
                results.append(measure(backend, name, transaction, n=n, batch=1, time_cap=time_cap))
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
    headers = ("backend", "scenario", "per txn", "ops", "ops/s", "p50 ms", "p99 ms", "CPU/op")
    rows = [
        (
            r.backend,
            r.scenario,
            str(r.batch),
            str(r.ops),
            f"{r.ops_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.cpu_us_per_op:,.0f} us",
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


def targets_line(results: list[Result]) -> str:
    """Which (backend, firings per transaction) meet the targets in every scenario, and why
    the others do not."""
    met, missed = [], []
    for backend, target in TARGET_OPS_PER_S.items():
        for batch in BATCHES:
            rows = [
                r
                for r in results
                if (r.backend, r.batch) == (backend, batch) and not r.scenario.startswith(FLOOR)
            ]
            if not rows:
                continue
            label = f"{backend} {'per call' if batch == 1 else f'batch {batch}'}"
            shortfalls = [
                f"{r.scenario} {r.ops_per_s:,.0f}/s" for r in rows if r.ops_per_s < target
            ] + [f"{r.scenario} p99 {r.p99_ms:.1f} ms" for r in rows if r.p99_ms >= TARGET_P99_MS]
            if shortfalls and batch == 1:
                # One commit per call: what the floors allow is what prevents it, or not.
                floors = [
                    f"{r.scenario.removeprefix(FLOOR).strip()} {r.ops_per_s:,.0f}/s"
                    for r in results
                    if r.backend == backend and r.scenario.startswith(FLOOR)
                ]
                shortfalls.append(f"floors measured in this run: {', '.join(floors)}")
            if shortfalls:
                missed.append(f"{label} ({', '.join(shortfalls)})")
            else:
                met.append(label)
    return (
        f"targets (sqlite >= {TARGET_OPS_PER_S['sqlite']:,}/s, postgresql >= "
        f"{TARGET_OPS_PER_S['postgresql']:,}/s, p99 < {TARGET_P99_MS:g} ms): "
        f"met by {', '.join(met) or 'none'}; missed by {'; '.join(missed) or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        default=2000,
        help="firings per row (default 2000; batched rows run"
        f" at least {MIN_TRANSACTIONS} transactions)",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server URL")
    parser.add_argument(
        "--time-cap", type=float, default=20.0, help="seconds per row at most (default 20)"
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
    # Numbers only compare on the same machine, and a busy one lowers them: say which it was.
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"{os.cpu_count()} CPUs (load average {load}), Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}; SQLite in WAL with synchronous=NORMAL (no fsync per commit)"
    )
    print_table(results)
    print(targets_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
