"""Shared fixtures: real Redis, the PostgreSQL test database, the tiny SAM3 saved to a folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services import fresh_postgres_database, postgres_answers, running_redis

DEFAULT_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEFAULT_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def redis_url() -> str:
    with running_redis(DEFAULT_REDIS_URL) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not postgres_answers(DEFAULT_POSTGRES_URL):
        pytest.skip(f"no PostgreSQL answers at {DEFAULT_POSTGRES_URL}")
    return DEFAULT_POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_database(postgres_url: str) -> str:
    """URL of one fresh database at Alembic head for this session (a unique name, so runs
    sharing the server never collide), dropped at the end. The store and job suites use it,
    truncating every table before each test (tests.services.truncate_all)."""
    with fresh_postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random SAM3 (112 px), saved with save_pretrained, for load_sam3."""
    from sam3_lora.tiny import save_tiny_sam3

    return save_tiny_sam3(tmp_path_factory.mktemp("tiny-sam3"))
