"""Run the Alembic migrations of migrations/ from Python (the app and the worker migrate at start).

`alembic upgrade head` from the repository root does the same through alembic.ini;
both end in migrations/env.py, which builds the engine with `make_engine` so the
SQLite pragmas apply.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for `url` that needs no alembic.ini (and so leaves logging alone)."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"migrations folder {MIGRATIONS_DIR} is missing: the studio must run from its source tree")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite database file if it does not exist yet (a fresh DATA_DIR)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def upgrade_database(url: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>` on `url`. Safe to run from several processes at once:
    each upgrade is one transaction holding the write lock (SQLite BEGIN IMMEDIATE,
    PostgreSQL advisory lock), so the second runner finds the schema already at head."""
    ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str) -> None:
    """`alembic downgrade <revision>` on `url` (e.g. "-1", or "base")."""
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    from app.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
