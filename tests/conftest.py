"""Shared fixtures. Domain fixtures live beside their tests; the rig's in reliability.testing.

Database fixtures run each test on both backends: `sqlite` (a file in a temporary
directory) and `postgres` (a database created for this test session on the server at
$RELIABILITY_TEST_PG_URL, dropped at the end). Schemas come from the real migrations.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from reliability import db
from reliability.testing.services import service_missing

pytest_plugins = ["reliability.testing.fixtures"]

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[sa.Engine]:
    """Autocommit engine on the PostgreSQL server's maintenance database, for CREATE DATABASE."""
    url = os.environ.get("RELIABILITY_TEST_PG_URL", DEFAULT_PG_URL)
    engine = db.make_engine(url)
    try:
        with db.connect(engine):
            pass
    except db.DatabaseUnavailable as exc:
        service_missing(f"PostgreSQL at {exc.url} ({exc.cause})")
    yield engine.execution_options(isolation_level="AUTOCOMMIT")
    engine.dispose()


@pytest.fixture(scope="session")
def pg_databases(pg_server: sa.Engine) -> Iterator[Callable[[], str]]:
    """pg_databases() -> the URL of a new, empty PostgreSQL database; all dropped at the end."""
    created: list[str] = []

    def create() -> str:
        name = f"reliability_test_{secrets.token_hex(4)}"
        with pg_server.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return make_url(pg_server.url).set(database=name).render_as_string(hide_password=False)

    yield create
    with pg_server.connect() as connection:
        for name in created:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A new database with no schema at all, on the current backend."""
    return _make(request, backend)


@pytest.fixture(scope="session")
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A database migrated to head, shared by the session's tests on this backend."""
    url = _make(request, backend)
    db.upgrade(url)
    return url


def _make(request: pytest.FixtureRequest, backend: str) -> str:
    # Looked up lazily so that SQLite-only runs never need (or skip for) the PostgreSQL server.
    if backend == "sqlite":
        directory = request.getfixturevalue("tmp_path_factory").mktemp("db")
        return f"sqlite:///{directory / 'reliability.db'}"
    return request.getfixturevalue("pg_databases")()


@pytest.fixture(scope="session")
def _shared_engine(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(_shared_engine: sa.Engine) -> sa.Engine:
    """The migrated database's engine, with every table emptied before the test."""
    tables = [table.name for table in db.load_models().sorted_tables]
    with _shared_engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        else:
            for name in reversed(tables):
                connection.exec_driver_sql(f"DELETE FROM {name}")
    return _shared_engine


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    """A session on the emptied, migrated database; the test commits as a caller would."""
    with db.session_factory(engine)() as session:
        yield session
