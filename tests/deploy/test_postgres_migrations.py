"""The migrations on PostgreSQL, as a deployment runs them (README, "Production checklist"):
`alembic upgrade head` from the command line with DATABASE_URL, several app and worker
containers upgrading one fresh database at once (migrations/env.py takes an advisory
lock), and downgrade -> upgrade on a populated database keeping every row. The SQLite
side of each is in tests/store/test_migrations.py, whose helpers these reuse; each test
here gets a database of its own (tests.services.fresh_postgres_database).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.script import ScriptDirectory

from app.store.db import make_engine
from app.store.migrate import alembic_config, current_revision, downgrade_database, upgrade_database
from tests.services import fresh_postgres_database
from tests.store.test_migrations import (REPO_ROOT, all_rows, head_revision, populate, rows_without,
                                         rows_without_columns, schema_differences)


@pytest.fixture
def empty_database(postgres_url) -> str:
    with fresh_postgres_database(postgres_url, migrate=False) as url:
        yield url


def test_alembic_upgrade_head_with_database_url(empty_database):
    environment = {**os.environ, "DATABASE_URL": empty_database}
    completed = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO_ROOT, env=environment,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "Running upgrade  -> 0001" in completed.stderr
    assert current_revision(empty_database) == head_revision()


def test_concurrent_upgrades_of_a_fresh_database_all_succeed(empty_database):
    script = f"from app.store.migrate import upgrade_database; upgrade_database({empty_database!r})"
    runners = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    errors = [runner.communicate(timeout=120)[1] for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0, 0], errors
    assert current_revision(empty_database) == head_revision()
    engine = make_engine(empty_database)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_keep_every_row(empty_database):
    upgrade_database(empty_database)
    engine = make_engine(empty_database)
    populate(engine)
    before = all_rows(engine)
    assert sum(len(rows) for rows in before.values()) == 21  # as in the SQLite test: one of every kind of row
    engine.dispose()

    downgrade_database(empty_database, "-1")
    head = ScriptDirectory.from_config(alembic_config(empty_database)).get_revision(head_revision())
    assert current_revision(empty_database) == head.down_revision
    upgrade_database(empty_database)
    engine = make_engine(empty_database)
    try:
        assert current_revision(empty_database) == head_revision()
        marks = {"prelabelmark": ("*",)}  # dropped with their table by 0004's downgrade, as in the SQLite test
        assert rows_without(engine, marks) == rows_without_columns(before, marks)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
