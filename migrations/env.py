"""Alembic environment of the studio.

The URL comes from, in order: `config.attributes["url"]` (app.store.migrate, tests),
`-x url=...`, `sqlalchemy.url` in the config, else `load_settings().database_url`
(DATABASE_URL, or DATA_DIR/studio.db with DATA_DIR created when missing).

SQLite specifics, all from sqlite.org/lang_altertable.html ("other kinds of table
schema changes"): batch mode recreates tables (SQLite's ALTER TABLE is limited), and
a batch DROP TABLE with foreign_keys=ON would cascade-delete child rows, so the
migration connection turns foreign keys off, runs everything in one BEGIN IMMEDIATE
transaction, and checks `PRAGMA foreign_key_check` before committing.
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlmodel import SQLModel

import app.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from app.store.db import make_engine
from app.store.migrate import ensure_sqlite_folder

# Any fixed 64-bit number: concurrent migrators on PostgreSQL queue on it.
POSTGRES_MIGRATION_LOCK = 0x5A3_5717

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
    )
    if url:
        return url
    from app.settings import load_settings

    settings = load_settings()
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    return settings.database_url


def check_sqlite_foreign_keys(connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        shown = ", ".join(f"{table} rowid {rowid} -> {parent}" for table, rowid, parent, _ in violations[:5])
        raise RuntimeError(f"migration left {len(violations)} broken foreign keys ({shown}); rolled back")


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=SQLModel.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    ensure_sqlite_folder(url)
    engine = make_engine(url)
    is_sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.execution_options(sqlite_begin="IMMEDIATE").connect() as connection:
            if is_sqlite:
                # on the raw connection, outside any transaction (the pragma is a no-op inside one)
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            context.configure(
                connection=connection,
                target_metadata=SQLModel.metadata,
                render_as_batch=is_sqlite,
                transactional_ddl=True,  # one transaction for the whole upgrade, SQLite included
                compare_type=True,
            )
            with context.begin_transaction():
                if engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK})
                context.run_migrations()
                if is_sqlite:
                    check_sqlite_foreign_keys(connection)
    finally:
        engine.dispose()  # the pooled connection has foreign keys off: never reuse it


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
