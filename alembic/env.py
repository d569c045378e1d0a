"""Alembic environment for the suite's schema (target: every domain's models).

The database is, in order: the connection `reliability.db.upgrade` passes in
`config.attributes["connection"]`; `-x url=...` on the command line; the config's
`sqlalchemy.url`; $RELIABILITY_DATABASE_URL; the default SQLite file. Engines come from
`reliability.db.make_engine`, so migrations see the same pragmas and driver as the suite.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from sqlalchemy import Connection

from alembic import context
from reliability import db

config = context.config
# Only the alembic command line has an ini file; the suite's own logging is left alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = db.load_models()


def database_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("RELIABILITY_DATABASE_URL")
        or db.DEFAULT_DATABASE_URL
    )


def run_migrations_offline() -> None:
    """Write the migration SQL (`alembic upgrade head --sql`) instead of running it."""
    url = db.normalize_url(database_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    options = {}
    if sqlite:
        # make_engine's SQLite connections emit a real BEGIN, so DDL is transactional there
        # too: a failed migration leaves the schema as it was.
        options = {"render_as_batch": True, "transactional_ddl": True}
        # Batch migrations rebuild a table (copy, drop, rename); with foreign keys on, the
        # DROP would fire ON DELETE CASCADE and delete child rows. The pragma only takes
        # effect outside a transaction, so it goes to the driver connection before BEGIN.
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(connection=connection, target_metadata=target_metadata, **options)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows breaking foreign keys: {broken}")
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = db.make_engine(database_url())
    try:
        with db.connect(engine) as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
