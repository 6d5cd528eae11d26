"""Fixtures of the job tests: a store with one project, on a real SQLite file (tables from
create_all) and, when a PostgreSQL server answers, on the session's migrated database
(tests/conftest.py `postgres_database`, every table truncated before each test)."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import SQLModel

from app.jobs.metrics import MetricWriter
from app.store.db import make_engine, write_session
from app.store.models import Project
from tests.services import truncate_all

SNAPSHOT = [[1, 1], [2, 3]]
CONFIG = {"epochs": 1, "lr": 1e-4}


def add_project(engine: Engine, name: str = "cracks") -> int:
    with write_session(engine) as session:
        project = Project(name=name)
        session.add(project)
        session.flush()
        return project.id


def write_metric_rows(engine: Engine, job_id: int, rows: list[dict]) -> None:
    """Write `rows` as the worker does (MetricWriter; all written when it closes)."""
    with MetricWriter(engine, job_id) as writer:
        writer.add(rows)


def new_store(data_dir: Path) -> tuple[Engine, int]:
    """DATA_DIR/studio.db with every table (create_all, not the migrations) and a project; (engine, project_id)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{(data_dir / 'studio.db').resolve()}")
    SQLModel.metadata.create_all(engine)
    return engine, add_project(engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> tuple[Engine, int]:
    if request.param == "sqlite":
        engine, project_id = new_store(tmp_path / "data")
    else:
        engine = make_engine(request.getfixturevalue("postgres_database"))
        truncate_all(engine)
        project_id = add_project(engine)
    yield engine, project_id
    engine.dispose()


@pytest.fixture
def engine(store) -> Engine:
    return store[0]


@pytest.fixture
def project_id(store) -> int:
    return store[1]
