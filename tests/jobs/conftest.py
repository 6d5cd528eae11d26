"""Fixtures of the job tests: a real SQLite file with the tables and one project."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import SQLModel

from app.store.db import make_engine, write_session
from app.store.models import Project

SNAPSHOT = [[1, 1], [2, 3]]
CONFIG = {"epochs": 1, "lr": 1e-4}


def new_store(data_dir: Path) -> tuple[Engine, int]:
    """DATA_DIR/studio.db with every table (create_all, not the migrations) and a project; (engine, project_id)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{(data_dir / 'studio.db').resolve()}")
    SQLModel.metadata.create_all(engine)
    with write_session(engine) as session:
        project = Project(name="cracks")
        session.add(project)
        session.flush()
        return engine, project.id


@pytest.fixture
def store(tmp_path) -> tuple[Engine, int]:
    engine, project_id = new_store(tmp_path / "data")
    yield engine, project_id
    engine.dispose()


@pytest.fixture
def engine(store) -> Engine:
    return store[0]


@pytest.fixture
def project_id(store) -> int:
    return store[1]
