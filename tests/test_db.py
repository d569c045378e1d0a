"""The database layer: engines, migrations, schema checks and the errors users see."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from alembic import command
from reliability import db
from reliability.config import Config
from reliability.incidents.models import IncidentEvent


def test_upgrade_migrates_an_empty_database_to_head_and_is_idempotent(empty_database_url):
    head = db.head_revision()

    assert db.upgrade(empty_database_url) == (None, head)
    assert db.upgrade(empty_database_url) == (head, head)

    engine = db.make_engine(empty_database_url)
    try:
        assert db.current_revision(engine) == head
        assert db.check_schema(engine) == head
    finally:
        engine.dispose()


def test_the_head_read_from_the_files_is_alembics():
    assert db.head_revision() == ScriptDirectory.from_config(db.alembic_config()).get_current_head()


def test_migrations_match_the_models(engine):
    """What `alembic check` verifies: the migrated schema has no drift from the models."""
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.load_models())
    assert diff == []


def test_migrations_downgrade_to_an_empty_schema_and_back(empty_database_url):
    db.upgrade(empty_database_url)
    engine = db.make_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            config = db.alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        assert db.current_revision(engine) is None
    finally:
        engine.dispose()
    assert db.upgrade(empty_database_url) == (None, db.head_revision())


def test_an_empty_database_is_out_of_date_with_a_hint_to_upgrade(empty_database_url):
    engine = db.make_engine(empty_database_url)
    try:
        with pytest.raises(db.SchemaOutOfDate) as raised:
            db.check_schema(engine)
    finally:
        engine.dispose()
    message = str(raised.value)
    assert "is at schema empty" in message
    assert f"the code needs {db.head_revision()}" in message
    assert "run `reliability db upgrade`" in message


def test_a_database_at_another_revision_is_out_of_date(empty_database_url):
    db.upgrade(empty_database_url)
    engine = db.make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'older'")
        with pytest.raises(db.SchemaOutOfDate, match="is at schema older, the code needs"):
            db.check_schema(engine)
    finally:
        engine.dispose()


def test_unreachable_postgres_is_unavailable_and_the_password_stays_secret():
    # Port 1 on loopback refuses at once: no server is needed for this test.
    url = "postgresql://reliability:s3cret-pw@127.0.0.1:1/reliability"
    engine = db.make_engine(url)
    try:
        with pytest.raises(db.DatabaseUnavailable) as from_check:
            db.check_schema(engine)
    finally:
        engine.dispose()
    with pytest.raises(db.DatabaseUnavailable) as from_upgrade:
        db.upgrade(url)

    for error in (from_check.value, from_upgrade.value):
        message = str(error)
        assert "s3cret-pw" not in message
        assert "reliability:***@127.0.0.1:1/reliability" in message
        assert "\n" not in message
        assert error.cause


def test_a_plain_postgresql_url_uses_psycopg_3():
    engine = db.make_engine("postgresql://user:pw@db.example:5432/reliability")
    assert engine.url.drivername == "postgresql+psycopg"
    assert db.mask_url(engine.url) == "postgresql+psycopg://user:***@db.example:5432/reliability"


def test_an_unparsable_url_is_a_database_error_that_does_not_echo_it():
    with pytest.raises(db.DatabaseError) as raised:
        db.make_engine("not a url with secret-pw")
    assert "secret-pw" not in str(raised.value)


def test_sqlite_creates_the_directory_and_sets_its_pragmas(tmp_path):
    path = tmp_path / "nested" / "dir" / "reliability.db"
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == db.SQLITE_BUSY_TIMEOUT_MS
            assert pragma("synchronous") == 1  # NORMAL
    finally:
        engine.dispose()
    assert path.exists()


def test_sqlite_syncs_every_commit_when_the_config_asks_for_full(tmp_path):
    config = Config(
        database={"url": f"sqlite:///{tmp_path / 'r.db'}", "sqlite_synchronous": "full"}
    )
    engine = db.make_engine(
        config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous
    )
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()
    with pytest.raises(ValidationError, match="sqlite_synchronous"):
        Config(database={"sqlite_synchronous": "off"})


def test_foreign_keys_are_enforced(session):
    session.add(
        IncidentEvent(incident_id=12345, at=datetime.now(UTC), kind="note", message="orphan")
    )
    with pytest.raises(IntegrityError):
        session.flush()


def test_savepoints_nest_inside_the_transaction(engine):
    """A rolled-back savepoint undoes only its own work; a released one still rolls back
    with its transaction. (SQLite's driver gets this wrong unless make_engine emits BEGIN.)"""
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TEMPORARY TABLE t (x INTEGER)")
        connection.commit()
        try:
            with connection.begin():
                connection.exec_driver_sql("INSERT INTO t VALUES (1)")
                with connection.begin_nested() as savepoint:
                    connection.exec_driver_sql("INSERT INTO t VALUES (2)")
                    savepoint.rollback()
            with connection.begin() as transaction:
                with connection.begin_nested():
                    connection.exec_driver_sql("INSERT INTO t VALUES (3)")
                transaction.rollback()
            assert connection.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]
        finally:
            connection.exec_driver_sql("DROP TABLE t")
            connection.commit()
