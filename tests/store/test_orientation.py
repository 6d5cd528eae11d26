"""One EXIF-orientation rule for uploads and imports, for all 8 orientation values: the
stored pixels are upright, and annotations are in the orientation whose size the COCO
file declares (turned with the image when that is the raw one); ambiguous cases refused."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageOps
from sqlmodel import select

from app.store.coco_import import import_coco
from app.store.db import read_session
from app.store.masks import rle_to_mask
from app.store.media import media_path
from app.store.models import Annotation, Image
from app.store.uploads import ingest_files
from tests.store.corpus_support import CORPUS, MB
from tests.store.test_uploads import make_project

EXIF = CORPUS / "exif"
RAW_W, RAW_H = 48, 32
RECT = [4.0, 4.0, 16.0, 4.0, 16.0, 12.0, 4.0, 12.0]  # the bright rectangle, in raw pixels


@pytest.fixture
def store(engine, tmp_path):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    yield SimpleNamespace(engine=engine, media_dir=media_dir, project_id=make_project(engine, "exif"))


def upright_reference(orientation: int) -> np.ndarray:
    with PILImage.open(EXIF / f"orientation-{orientation}.jpg") as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def stored_pixels(store, image: Image) -> np.ndarray:
    with PILImage.open(media_path(store.media_dir, image.path)) as stored:
        return np.asarray(stored.convert("RGB"))


def import_one(store, orientation: int, size: tuple[int, int] | None, polygon: list[float]):
    entry = {"id": 1, "file_name": f"orientation-{orientation}.jpg"}
    if size:
        entry.update(width=size[0], height=size[1])
    document = {"images": [entry, {"id": 2, "file_name": "orientation-1.jpg", "width": RAW_W, "height": RAW_H}],
                "categories": [{"id": 1, "name": "marker"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [polygon]},
                                {"id": 2, "image_id": 2, "category_id": 1, "segmentation": [RECT]}]}
    return import_coco(store.engine, store.media_dir, store.project_id, json.dumps(document).encode(), EXIF, MB)


def marker_hit(store, name: str) -> tuple[float, float]:
    """(mean brightness inside the stored mask, mean brightness of the rest) on the stored image."""
    with read_session(store.engine) as session:
        image = session.exec(select(Image).where(Image.original_name == name)).one()
        (row,) = session.exec(select(Annotation).where(Annotation.image_id == image.id)).all()
    pixels = stored_pixels(store, image).mean(axis=2)
    mask = rle_to_mask(json.loads(row.rle))
    return float(pixels[mask].mean()), float(pixels[~mask].mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_uploads_store_every_orientation_upright(store, orientation):
    report = ingest_files(store.engine, store.media_dir, store.project_id, [EXIF / f"orientation-{orientation}.jpg"], MB)
    with read_session(store.engine) as session:
        image = session.get(Image, report.accepted[0][1])
    assert (image.width, image.height) == ((RAW_H, RAW_W) if orientation >= 5 else (RAW_W, RAW_H))
    assert np.array_equal(stored_pixels(store, image), upright_reference(orientation))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_annotations_declared_on_the_raw_size_land_on_the_object(store, orientation):
    report = import_one(store, orientation, (RAW_W, RAW_H), RECT)
    if orientation in (2, 3, 4):  # turning keeps the size: the file cannot say which pixels it means
        (refused,) = report.images.refused
        assert refused[0] == f"orientation-{orientation}.jpg"
        assert f"has EXIF orientation {orientation}" in refused[1] and "which keeps its size 48x32" in refused[1]
        assert "exiftool -Orientation=1 -n FILE" in refused[1]
        assert report.annotations_imported == 1, "the other image of the file is imported"
        return
    same_file_twice = orientation == 1  # the second image of the file is orientation-1.jpg itself
    assert report.annotations_imported == (1 if same_file_twice else 2) and report.turned == (orientation >= 5)
    inside, outside = marker_hit(store, f"orientation-{orientation}.jpg")
    assert inside > 200 and outside < 60, (inside, outside)


@pytest.mark.parametrize("orientation", range(5, 9))
def test_annotations_declared_on_the_upright_size_are_kept_as_they_are(store, orientation):
    bright = np.argwhere(upright_reference(orientation).mean(axis=2) > 150)
    (top, left), (bottom, right) = bright.min(axis=0), bright.max(axis=0) + 1
    upright_rect = [left, top, right, top, right, bottom, left, bottom]
    report = import_one(store, orientation, (RAW_H, RAW_W), [float(v) for v in upright_rect])
    assert report.annotations_imported == 2 and report.turned == 0
    inside, outside = marker_hit(store, f"orientation-{orientation}.jpg")
    assert inside > 200 and outside < 60, (inside, outside)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_turned_image_without_a_declared_size_is_refused_with_how_to_fix_it(store, orientation):
    report = import_one(store, orientation, None, RECT)
    (refused,) = report.images.refused
    assert "the COCO file gives no width and height for it" in refused[1] and "add its width and height" in refused[1]
    assert dict(report.skipped)["annotation 1"].startswith(f"its image orientation-{orientation}.jpg was not imported")
    assert report.annotations_imported == 1
