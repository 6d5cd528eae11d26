"""Store fixtures: `engine` runs each test on a fresh migrated SQLite file and, when a
PostgreSQL server answers, on the session's migrated database (tests/conftest.py
`postgres_database`; tables truncated before each test). Plus small builders for rows and masks.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from sqlalchemy import Engine

from app.store.db import make_engine, write_session
from app.store.migrate import upgrade_database
from app.store.models import Image
from tests.services import truncate_all

_image_numbers = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Engine:
    """An engine on a database at Alembic head with no rows."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'studio.db'}"
        upgrade_database(url)
        engine = make_engine(url)
    else:
        engine = make_engine(request.getfixturevalue("postgres_database"))
        truncate_all(engine)
    yield engine
    engine.dispose()


def engine_url(engine: Engine) -> str:
    """The URL a child process needs to open the same database."""
    return engine.url.render_as_string(hide_password=False)


def add_image(engine: Engine, project_id: int, width: int = 40, height: int = 30, status: str = "unlabelled") -> Image:
    """An image row (no file: the store functions under test never open it)."""
    number = next(_image_numbers)
    with write_session(engine) as session:
        image = Image(project_id=project_id, sha256=f"{number:064x}", width=width, height=height,
                      status=status, path=f"images/{number}.png", original_name=f"photo-{number}.jpg")
        session.add(image)
        session.flush()
        return image


def box_rle(height: int, width: int, top: int, left: int, box_height: int, box_width: int) -> dict:
    """Compressed COCO RLE (counts as str, as JSON carries it) of one filled rectangle."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:top + box_height, left:left + box_width] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
