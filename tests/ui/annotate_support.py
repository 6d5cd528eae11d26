"""Shared set-up of the Annotate-tab handler tests: a real migrated SQLite studio proposing
with the tiny SAM3, a project with concepts and small random images, and readers of the
seven VIEW outputs (app.ui.annotate_view.VIEW_OUTPUTS)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from app.store import projects
from app.store.annotations import list_annotations
from app.store.uploads import ingest_files
from app.studio import Studio, open_studio
from app.ui import annotate_navigation as navigation
from app.ui.annotate_overlay import display_scale
from app.ui.annotate_view import VIEW_OUTPUTS, new_session

NO_CHANGE = {"__type__": "update"}  # gr.update() with nothing in it
IMAGE_SIZE = (48, 40)  # width, height


@pytest.fixture
def studio(tmp_path, tiny_model_dir) -> Studio:
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data", SAM3_MODEL=str(tiny_model_dir)))
    yield studio
    studio.engine.dispose()


@dataclass
class Project:
    id: int
    concepts: dict[str, int]  # name -> id
    images: list[int]


def png_bytes(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_project(studio: Studio, concepts=("crack", "pothole"), images: int = 1) -> Project:
    project = projects.create_project(studio.engine, "Roads")
    concept_ids = {name: projects.add_concept(studio.engine, project.id, name).id for name in concepts}
    report = ingest_files(studio.engine, studio.media_dir, project.id,
                          [(f"road{i}.png", png_bytes(i)) for i in range(images)], max_bytes=10_000_000)
    image_ids = [image_id for _, image_id in report.accepted]
    assert len(image_ids) == images, report.refused
    return Project(project.id, concept_ids, image_ids)


def view(outputs: tuple) -> dict:
    """The VIEW outputs by name."""
    assert len(outputs) == len(VIEW_OUTPUTS)
    return dict(zip(VIEW_OUTPUTS, outputs))


def opened(studio: Studio, project: Project, threshold: float = 0.5) -> dict:
    """The session after choosing the project in the Projects & Data tab (its first image open)."""
    session = view(navigation.open_project(studio, new_session(), threshold, project.id))["session"]
    assert session["image_id"] == project.images[0]
    return session


def live(studio: Studio, image_id: int) -> dict[int, object]:
    """The image's non-deleted annotations by id."""
    return {a.id: a for a in list_annotations(studio.engine, image_id)}


def on_overlay(x: float, y: float) -> tuple[float, float]:
    """Image pixel (x, y) -> where it is on the (enlarged) overlay picture of an IMAGE_SIZE image."""
    scale = display_scale((IMAGE_SIZE[1], IMAGE_SIZE[0]))
    return x * scale + scale // 2, y * scale + scale // 2


def table_rows(table: dict) -> list[list]:
    """The rows of an instance-table value (annotate_view.instance_table's dict)."""
    return table["data"]


def assert_only_row_marked(table: dict, annotation_id: int) -> None:
    """The selected instance's row, and no other, carries the ▶ mark and the highlight style."""
    styles = table["metadata"]["styling"]
    for row, style in zip(table["data"], styles, strict=True):
        chosen = int(str(row[0]).lstrip("▶ ")) == annotation_id
        assert str(row[0]).startswith("▶") == chosen and all(bool(cell) == chosen for cell in style), (row, style)
    assert sum(str(row[0]).startswith("▶") for row in table["data"]) == 1


def table_ids(table: dict | list) -> list[int]:
    return [int(str(row[0]).lstrip("▶ ")) for row in table_rows(table)]
