"""PostgreSQL connections that cannot hang a thread: every connection of the project's
engine carries the config's statement, lock and idle-in-transaction limits (the server
enforces them) and TCP keepalives (the kernel probes a silent server), and a statement
past a limit fails with the server's own words for it.

Real PostgreSQL only: these are the server's settings.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

from reliability import db
from reliability.config import Config

pytestmark = pytest.mark.postgres


def _limits(**database: object) -> db.PostgresLimits:
    return Config.model_validate({"database": database}).database.limits()


@pytest.fixture
def pg_url(pg_databases: Callable[[], str]) -> str:
    return pg_databases()


@pytest.fixture
def engine_with(pg_url: str) -> Iterator[Callable[..., sa.Engine]]:
    """engine_with(**database section) -> the project's engine as that config makes it."""
    made: list[sa.Engine] = []

    def make(**database: object) -> sa.Engine:
        made.append(db.make_engine(pg_url, _limits(**database)))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def test_every_connection_carries_the_default_limits_and_keepalives(engine_with) -> None:
    engine = engine_with()
    with engine.connect() as connection:
        show = lambda name: connection.exec_driver_sql(f"SHOW {name}").scalar()  # noqa: E731
        assert show("statement_timeout") == "30s"
        assert show("lock_timeout") == "10s"
        assert show("idle_in_transaction_session_timeout") == "1min"
        assert show("application_name") == "reliability"
        # What the kernel does with the socket, not what was asked for.
        fd = connection.connection.driver_connection.pgconn.socket
        sock = socket.socket(fileno=fd)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        finally:
            sock.detach()  # the connection still owns the descriptor


def test_the_config_sets_each_limit(engine_with) -> None:
    engine = engine_with(
        statement_timeout="2s",
        lock_timeout="500ms",
        idle_in_transaction_timeout="0s",
        keepalives_idle="7s",
        keepalives_interval="3s",
        keepalives_count=5,
    )
    with engine.connect() as connection:
        show = lambda name: connection.exec_driver_sql(f"SHOW {name}").scalar()  # noqa: E731
        assert show("statement_timeout") == "2s"
        assert show("lock_timeout") == "500ms"
        assert show("idle_in_transaction_session_timeout") == "0"  # off
        fd = connection.connection.driver_connection.pgconn.socket
        sock = socket.socket(fileno=fd)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 5
        finally:
            sock.detach()


@pytest.mark.timeout(30)
def test_a_long_statement_is_cancelled_at_the_statement_timeout(engine_with) -> None:
    engine = engine_with(statement_timeout="1s")
    started = time.monotonic()
    with engine.connect() as connection, pytest.raises(OperationalError) as raised:
        connection.exec_driver_sql("SELECT pg_sleep(20)")
    assert time.monotonic() - started < 10
    assert "canceling statement due to statement timeout" in str(raised.value)
    with engine.connect() as connection:  # the pool's connections still work
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1


@pytest.mark.timeout(30)
def test_a_statement_waiting_for_a_lock_fails_at_the_lock_timeout(engine_with) -> None:
    engine = engine_with(lock_timeout="500ms")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE held (id int PRIMARY KEY)")
        connection.exec_driver_sql("INSERT INTO held VALUES (1)")
    with engine.connect() as holder, engine.connect() as waiter:
        holder.exec_driver_sql("SELECT id FROM held WHERE id = 1 FOR UPDATE")
        with pytest.raises(OperationalError) as raised:
            waiter.exec_driver_sql("UPDATE held SET id = 2 WHERE id = 1")
        assert "canceling statement due to lock timeout" in str(raised.value)


@pytest.mark.timeout(30)
def test_a_transaction_left_idle_is_ended_and_its_locks_freed(engine_with) -> None:
    engine = engine_with(idle_in_transaction_timeout="1s")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE held (id int PRIMARY KEY)")
        connection.exec_driver_sql("INSERT INTO held VALUES (1)")
    with engine.connect() as forgotten:
        forgotten.exec_driver_sql("SELECT id FROM held WHERE id = 1 FOR UPDATE")
        time.sleep(2)
        with engine.begin() as other:  # the row is free again
            other.exec_driver_sql("UPDATE held SET id = 2 WHERE id = 1")
        with pytest.raises(DBAPIError) as raised:
            forgotten.exec_driver_sql("SELECT 1")
        assert "idle-in-transaction timeout" in str(raised.value)


def test_hosts_starting_together_migrate_one_at_a_time(pg_url: str) -> None:
    """Each host runs `db upgrade` at start; two at once must both succeed."""
    results: list[object] = []

    def upgrade() -> None:
        try:
            results.append(db.upgrade(pg_url))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    head = db.head_revision()
    assert sorted(results, key=str) == sorted([(None, head), (head, head)], key=str), results


def test_bad_limits_are_config_errors_naming_the_field() -> None:
    from pydantic import ValidationError

    for field, value in (("statement_timeout", "-1s"), ("keepalives_count", 0)):
        with pytest.raises(ValidationError) as raised:
            Config.model_validate({"database": {field: value}})
        assert field in str(raised.value)
