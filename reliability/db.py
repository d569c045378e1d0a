"""Database plumbing: engines, sessions, schema version and migrations.

Every domain's tables derive from `Base`; `load_models()` imports them all so Alembic and
the tests see the whole schema. The errors a user can act on are typed: `DatabaseUnavailable`
(cannot connect) and `SchemaOutOfDate` (run `reliability db upgrade`). Messages name the
database by its masked URL, never with its password.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from reliability import shipped

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = shipped.folder("alembic")
DEFAULT_DATABASE_URL = "sqlite:///var/reliability.db"
CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_MS = 5000
# PRAGMA synchronous in WAL mode. NORMAL: no fsync per commit (the WAL is synced at each
# checkpoint); the database stays consistent, but a power loss (not a crash of the process)
# can drop the last commits. FULL: an fsync per commit, durable, several times slower.
SQLITE_SYNCHRONOUS = ("normal", "full")
MIGRATION_LOCK = 0x72656C69  # pg_advisory_lock key of `upgrade` ("reli")

# Every domain's models module; load_models() imports them so Base.metadata is complete.
MODEL_MODULES = (
    "reliability.incidents.models",
    "reliability.notify.models",
    "reliability.runbooks.models",
    "reliability.images.models",
    "reliability.fleet.models",
    "reliability.oncall.models",
    "reliability.capacity.models",
    "reliability.cluster.models",
    "reliability.maintenance.models",
    "reliability.detect.models",
)

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table in the suite."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# JSONB on PostgreSQL (queryable by containment); None is SQL NULL.
JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def string_enum(enum: type[StrEnum], name: str) -> sa.Enum:
    """A short string column with a CHECK rather than a native enum type: adding a value
    later is an ordinary migration on every backend."""
    return sa.Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Binding a naive datetime is an error (its zone is unknown). SQLite has no zoned type, so
    values are stored there as naive UTC, which also keeps its text comparisons in time order;
    loaded values are always aware and in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DatabaseError(Exception):
    """Base of the database errors a user can act on."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached: server down, wrong address, credentials, unwritable file.

    Retrying helps once the cause is fixed. `url` is masked; `cause` is one line.
    """

    def __init__(self, url: str, cause: str) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"cannot connect to database {url}: {cause}")


class SchemaOutOfDate(DatabaseError):
    """The database schema is not the one this code needs (`current` is None when empty)."""

    def __init__(self, url: str, current: str | None, head: str) -> None:
        self.url = url
        self.current = current
        self.head = head
        super().__init__(
            f"database {url} is at schema {current or 'empty'}, the code needs {head}: "
            "run `reliability db upgrade`"
        )


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; a plain `postgresql://` URL gets the psycopg (3) driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The parser's message is generic; never echo the URL, it may hold a password.
        raise DatabaseError("invalid database URL: expected e.g. sqlite:///path.db") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


@dataclass(frozen=True, slots=True)
class PostgresLimits:
    """What bounds every PostgreSQL connection, so that no thread hangs on the database.

    The server cancels a statement running longer than `statement_timeout` or waiting
    longer than `lock_timeout` for a lock, and ends a session left idle inside a
    transaction for `idle_in_transaction_timeout` (freeing its locks); TCP keepalives
    (first probe after `keepalives_idle` of silence, then every `keepalives_interval`,
    `keepalives_count` unanswered ones end it) break a half-open connection to a server
    that vanished. Seconds; 0 turns a server-side limit off. The config's `database`
    section sets them (config/models.py `DatabaseConfig`).
    """

    connect_timeout: float = CONNECT_TIMEOUT_S
    statement_timeout: float = 30.0
    lock_timeout: float = 10.0
    idle_in_transaction_timeout: float = 60.0
    keepalives_idle: float = 30.0
    keepalives_interval: float = 10.0
    keepalives_count: int = 3

    def connect_args(self) -> dict[str, Any]:
        """libpq's connection parameters: keepalives, and the limits as `options=-c ...`
        (server settings of the session, as `SET` would make them)."""
        settings = {
            "statement_timeout": self.statement_timeout,
            "lock_timeout": self.lock_timeout,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_timeout,
        }
        options = " ".join(f"-c {name}={round(s * 1000)}" for name, s in settings.items())
        return {
            # libpq takes whole seconds; at least 1, since 0 would mean wait forever.
            "connect_timeout": max(1, round(self.connect_timeout)),
            "application_name": "reliability",
            "options": options,
            "keepalives": 1,
            "keepalives_idle": max(1, round(self.keepalives_idle)),
            "keepalives_interval": max(1, round(self.keepalives_interval)),
            "keepalives_count": self.keepalives_count,
        }


def make_engine(
    url: str | URL, limits: PostgresLimits | None = None, *, sqlite_synchronous: str = "normal"
) -> Engine:
    """An engine for `url`, configured for this suite; it does not connect yet.

    SQLite: the file's directory is created; every connection gets WAL, busy_timeout,
    foreign_keys=ON and `sqlite_synchronous` (see SQLITE_SYNCHRONOUS; the config's
    `database.sqlite_synchronous`), and transactions start with BEGIN IMMEDIATE.
    PostgreSQL: psycopg 3, `limits` (default `PostgresLimits()`) on every connection, and
    pre-ping so dead pooled connections are replaced instead of failing the next statement.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise DatabaseError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}")
        _ensure_sqlite_directory(parsed)
        engine = create_engine(parsed)
        event.listen(
            engine, "connect", functools.partial(_sqlite_on_connect, synchronous=sqlite_synchronous)
        )
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = (limits or PostgresLimits()).connect_args()
    return create_engine(
        parsed, pool_pre_ping=True, pool_timeout=CONNECT_TIMEOUT_S, connect_args=connect_args
    )


class LazyEngine:
    """One engine for `url`, made at first use and shared by every thread that asks.

    Made lazily because a database that is down (or a SQLite directory not yet creatable)
    when the daemon starts must not stop it; `get()` raises DatabaseError until it can be
    made. One engine means one connection pool for the daemon's readiness check, intake,
    rule recording, timers and Slack dispatcher.
    """

    def __init__(
        self, url: str, limits: PostgresLimits | None = None, *, sqlite_synchronous: str = "normal"
    ) -> None:
        self.url = url
        self.limits = limits
        self.sqlite_synchronous = sqlite_synchronous
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._lock = threading.Lock()

    def get(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(
                    self.url, self.limits, sqlite_synchronous=self.sqlite_synchronous
                )
                self._sessions = session_factory(self._engine)
            return self._engine

    def session(self) -> Session:
        """A new session on the engine (made now if it is not yet)."""
        self.get()
        assert self._sessions is not None
        return self._sessions()

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine`; objects stay readable after commit (for printing and JSON)."""
    return sessionmaker(engine, expire_on_commit=False)


def _ensure_sqlite_directory(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    directory = Path(database).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(
            mask_url(url), f"cannot create directory {directory}: {exc.strerror}"
        ) from exc


def _sqlite_on_connect(dbapi_connection: Any, _record: Any, *, synchronous: str) -> None:
    # Take BEGIN away from the sqlite3 module, which skips it before SELECT and SAVEPOINT
    # (breaking savepoints); _sqlite_on_begin emits it instead. Pragmas then run in autocommit.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock up front, waiting up to busy_timeout. A deferred
    # transaction that reads and then writes fails at once with "database is locked" when
    # another process wrote in between, and busy_timeout cannot help it.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def error_line(exc: BaseException) -> str:
    """A database error in one line: the first line of the driver's message."""
    cause = str(getattr(exc, "orig", None) or exc).strip()
    return next((line.strip() for line in cause.splitlines() if line.strip()), type(exc).__name__)


def _unavailable(url: str | URL, exc: BaseException) -> DatabaseUnavailable:
    """A DatabaseUnavailable for a failed connect: masked URL, first line of the cause."""
    parsed = make_url(url)
    cause = error_line(exc)
    if parsed.password:
        # Drivers do not normally echo the password, but a message is no place to find out.
        cause = cause.replace(str(parsed.password), "***")
    return DatabaseUnavailable(mask_url(parsed), cause)


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """`engine.connect()`, with a failure to connect raised as DatabaseUnavailable."""
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        raise _unavailable(engine.url, exc) from exc
    with connection:
        yield connection


def load_models() -> MetaData:
    """Import every domain's models so `Base.metadata` holds the whole schema; return it."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return Base.metadata


def alembic_config() -> Config:
    """Alembic configuration for the bundled migrations, independent of the working directory.
    Alembic is imported here, not at start: only `db upgrade` and the tests need it."""
    from alembic.config import Config

    config = Config()
    # Config values are %-interpolated, so a literal % in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


_REVISION_LINE = re.compile(
    r"^(down_revision|revision)\b[^=]*=\s*(?:\(?\s*)?['\"]?([0-9a-f]+)?", re.MULTILINE
)


@functools.cache  # the migrations on disk are fixed for the life of the process
def head_revision() -> str:
    """The schema revision this code needs: the one migration no other names as its
    `down_revision`. Read from the files' two assignments, without importing Alembic (a
    command checking the schema starts in a fraction of the time); tests/test_db.py checks
    it against Alembic's own answer."""
    revisions, parents = set(), set()
    for path in MIGRATIONS_DIR.glob("versions/*.py"):
        found = dict((m[1], m[2]) for m in _REVISION_LINE.finditer(path.read_text()))
        if found.get("revision"):
            revisions.add(found["revision"])
            parents.add(found.get("down_revision"))
    heads = revisions - parents
    if len(heads) != 1:
        raise DatabaseError(f"expected one head among the migrations in {MIGRATIONS_DIR}: {heads}")
    return heads.pop()


def _revision(connection: Connection) -> str | None:
    """The revision Alembic recorded (its `alembic_version` table); None before the first."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for an empty (never migrated) database."""
    with connect(engine) as connection:
        return _revision(connection)


def check_schema(engine: Engine) -> str:
    """Return the database's revision if it is the head; else raise SchemaOutOfDate."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDate(mask_url(engine.url), current, head)
    return current


def upgrade(url: str | URL) -> tuple[str | None, str]:
    """Migrate the database at `url` to the head revision; return (from, to) revisions.

    Idempotent: a database already at head is left as it is (from == to). On PostgreSQL
    a migration may rewrite a large table, so it runs without the statement and lock
    limits, and under an advisory lock: hosts starting together migrate one at a time.
    """
    engine = make_engine(url, PostgresLimits(statement_timeout=0, lock_timeout=0))
    try:
        with connect(engine) as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
                connection.commit()  # the lock is the session's; released when it closes
            before = _revision(connection)
            # End the read's transaction so Alembic owns, and commits, the migration's own.
            connection.rollback()
            from alembic import command

            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    return before, head_revision()
