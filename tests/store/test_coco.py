"""COCO import: every kind of mask, every reason to skip, zips and folders, and a lossless
import -> export -> import round trip that pycocotools reads."""
from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from sqlmodel import select

from app.store.coco_export import export_coco
from app.store.coco_import import import_coco, import_coco_zip
from app.store.db import read_session, write_session
from app.store.masks import mask_to_rle, polygons_to_rle, rle_to_mask
from app.store.models import Annotation, AnnotationHistory, Concept, Image
from tests.store.test_uploads import image_bytes, make_project

MB = 1024 * 1024


@pytest.fixture
def store(engine, tmp_path):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    yield SimpleNamespace(engine=engine, media_dir=media_dir, project_id=make_project(engine, "coco"))


def blob(height: int, width: int, seed: int) -> np.ndarray:
    """An irregular filled blob, bool [H, W]."""
    yy, xx = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    return ((yy - cy) / (0.3 * height)) ** 2 + ((xx - cx) / (0.25 * width)) ** 2 + 0.2 * np.sin(xx / 3.0) < 1


def uncompressed(mask: np.ndarray) -> dict:
    flat = mask.T.ravel().astype(np.int8)  # column-major, as COCO counts run
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


TRIANGLE = [4.0, 4.0, 40.0, 6.0, 20.0, 30.0]
OUT_OF_BOUNDS = [50.0, -10.0, 80.0, 10.0, 55.0, 40.0]  # image a is 64 x 48


def scenario():
    """A COCO document and its images covering each import path and each skip reason."""
    mask_a, mask_b = blob(48, 64, 1), blob(30, 40, 2)
    empty = mask_to_rle(np.zeros((30, 40), dtype=bool))
    bad_counts = {"size": [30, 40], "counts": [100, 5]}
    document = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "pics/b.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "missing.png", "width": 10, "height": 10},
            {"id": 4, "file_name": "negative.png", "width": 20, "height": 20},
        ],
        "categories": [{"id": 1, "name": "crack"}, {"id": 2, "name": " Rust  "}, {"id": 7, "name": "dent"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [TRIANGLE], "bbox": [0, 0, 1, 1], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": mask_to_rle(mask_a), "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": uncompressed(mask_b), "iscrowd": 1},
            {"id": 13, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 8]},
            {"id": 14, "image_id": 1, "category_id": 1, "segmentation": [OUT_OF_BOUNDS]},
            {"id": 15, "image_id": 1, "category_id": 1, "segmentation": [], "bbox": [3, 3, 0, 5]},
            {"id": 16, "image_id": 1, "category_id": 99, "segmentation": [TRIANGLE]},
            {"id": 17, "image_id": 42, "category_id": 1, "segmentation": [TRIANGLE]},
            {"id": 18, "image_id": 3, "category_id": 1, "segmentation": [TRIANGLE]},
            {"id": 19, "image_id": 1, "category_id": 1, "segmentation": [[100, 100, 120, 100, 110, 130]]},
            {"id": 20, "image_id": 1, "category_id": 1, "segmentation": mask_to_rle(mask_b)},
            {"id": 21, "image_id": 2, "category_id": 1, "segmentation": bad_counts},
            {"id": 22, "image_id": 2, "category_id": 1, "segmentation": empty},
        ],
    }
    images = {
        "a.png": image_bytes("PNG", (64, 48), seed=1),
        "pics/b.jpg": image_bytes("JPEG", (40, 30), seed=2),
        "negative.png": image_bytes("PNG", (20, 20), seed=3),
    }
    expected = {  # annotation id -> mask it must be stored as
        10: rle_to_mask(polygons_to_rle([TRIANGLE], 48, 64)),
        11: mask_a,
        12: mask_b,
        13: np.pad(np.ones((8, 10), dtype=bool), ((5, 17), (5, 25))),
        14: rle_to_mask(polygons_to_rle([OUT_OF_BOUNDS], 48, 64)),
    }
    return document, images, expected


def stored_annotations(engine, project_id):
    query = (select(Annotation, Concept.name, Image.original_name)
             .join(Concept, Concept.id == Annotation.concept_id).join(Image, Image.id == Annotation.image_id)
             .where(Image.project_id == project_id).order_by(Annotation.id))
    with read_session(engine) as session:
        return session.exec(query).all()


def test_import_stores_every_mask_kind_and_skips_with_reasons(store):
    document, images, expected = scenario()

    report = import_coco(store.engine, store.media_dir, store.project_id, json.dumps(document).encode(), images, MB)

    assert report.annotations_imported == 5
    assert (report.boxes_as_masks, report.clipped) == (1, 1)
    assert report.concepts_created == ["crack", "Rust", "dent"]
    skipped = dict(report.skipped)
    assert skipped["missing.png"] == "missing from the upload"
    assert skipped["annotation 15"] == "zero-area box [3, 3, 0, 5]"
    assert skipped["annotation 16"] == "unknown category id 99"
    assert skipped["annotation 17"] == "unknown image id 42"
    assert skipped["annotation 18"] == "its image missing.png was not imported (missing from the upload)"
    assert skipped["annotation 19"] == "polygon covers no pixel of the image (zero area)"
    assert skipped["annotation 20"] == "RLE mask is 40x30 but its image is 64x48"
    assert skipped["annotation 21"].startswith("RLE mask is invalid: mask runs must be >= 0 and cover 30x40")
    assert skipped["annotation 22"] == "RLE mask is invalid: mask is empty (no pixel set)"
    assert len(report.skipped) == 9
    assert "1 annotation(s) had only a box; stored as box-shaped masks" in report.messages()

    rows = stored_annotations(store.engine, store.project_id)
    assert [(name, image) for _, name, image in rows] == [
        ("crack", "a.png"), ("Rust", "a.png"), ("crack", "pics/b.jpg"), ("Rust", "pics/b.jpg"), ("crack", "a.png")]
    for (row, _, _), source_id in zip(rows, [10, 11, 12, 13, 14]):
        mask = rle_to_mask(json.loads(row.rle))
        assert np.array_equal(mask, expected[source_id]), f"annotation {source_id}"
        ys, xs = np.nonzero(mask)
        assert json.loads(row.bbox) == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert row.area == mask.sum() and (row.source, row.revision) == ("import", 1)
    assert [row.iscrowd for row, _, _ in rows] == [False, False, True, False, False]
    with read_session(store.engine) as session:
        history = session.exec(select(AnnotationHistory).order_by(AnnotationHistory.id)).all()
        statuses = {i.original_name: i.status for i in session.exec(select(Image))}
    assert [(h.annotation_id, h.revision, h.outcome, h.author, h.source) for h in history] == [
        (row.id, 1, "saved", "import", "import") for row, _, _ in rows]
    assert statuses == {"a.png": "reviewed", "pics/b.jpg": "reviewed", "negative.png": "reviewed"}


def test_invalid_json_names_the_parser_position(store):
    report = import_coco(store.engine, store.media_dir, store.project_id, b'{"images": [1, 2,, 3]}', {}, MB)
    assert report.skipped == [
        ("annotations.json", "annotations.json is not valid JSON: Expecting value at line 1 column 18 (char 17)")]
    assert report.annotations_imported == 0


def test_reimport_adds_nothing_and_matches_concepts_ignoring_case(store):
    with write_session(store.engine) as session:
        session.add(Concept(project_id=store.project_id, name="CRACK", color="#123456"))
    document, images, _ = scenario()
    first = import_coco(store.engine, store.media_dir, store.project_id, json.dumps(document).encode(), images, MB)
    second = import_coco(store.engine, store.media_dir, store.project_id, json.dumps(document).encode(), images, MB)

    assert first.concepts_created == ["Rust", "dent"]
    assert second.annotations_imported == 0 and second.concepts_created == []
    assert sorted(second.images.duplicates) == [("a.png", "a.png"), ("negative.png", "negative.png"),
                                                ("pics/b.jpg", "pics/b.jpg")]
    assert sum(reason == "same mask already stored" for _, reason in second.skipped) == 5
    assert len(stored_annotations(store.engine, store.project_id)) == 5


def test_declared_size_mismatch_skips_that_images_annotations(store):
    document = {"images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 64}],
                "categories": [{"id": 1, "name": "crack"}],
                "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": [TRIANGLE]}]}
    report = import_coco(store.engine, store.media_dir, store.project_id, json.dumps(document).encode(),
                         {"a.png": image_bytes("PNG", (64, 48))}, MB)
    assert dict(report.skipped)["annotation 5"] == "image a.png is 64x48 but the COCO file says 48x64"
    assert report.annotations_imported == 0


def test_folder_import_refuses_names_leaving_the_folder(store, tmp_path):
    folder = tmp_path / "dataset"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(image_bytes("PNG", (64, 48), seed=1))
    (tmp_path / "secret.png").write_bytes(image_bytes("PNG", (64, 48), seed=9))
    document = {"images": [{"id": 1, "file_name": "img/a.png"}, {"id": 2, "file_name": "../secret.png"},
                           {"id": 3, "file_name": str(tmp_path / "secret.png")}],
                "categories": [{"id": 1, "name": "crack"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [TRIANGLE]}]}
    (folder / "annotations.json").write_text(json.dumps(document))

    report = import_coco(store.engine, store.media_dir, store.project_id, folder / "annotations.json", folder, MB)

    assert report.annotations_imported == 1 and report.images.accepted == [("img/a.png", 1)]
    unsafe = "unsafe file name (absolute or containing '..')"
    assert dict(report.skipped) == {"../secret.png": unsafe, str(tmp_path / "secret.png"): unsafe}


def test_zip_import_with_one_json_and_its_images(store):
    document, images, _ = scenario()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/annotations/instances.json", json.dumps(document))
        archive.writestr("set/a.png", images["a.png"])
        archive.writestr("set/pics/b.jpg", images["pics/b.jpg"])
        archive.writestr("set/negative.png", images["negative.png"])
        archive.writestr("set/unlisted.png", image_bytes("PNG", seed=5))
        archive.writestr("../evil.png", image_bytes("PNG", seed=6))
        archive.writestr("__MACOSX/set/._a.png", b"junk")

    report = import_coco_zip(store.engine, store.media_dir, store.project_id, buffer.getvalue(), MB)

    assert report.annotations_imported == 5
    assert sorted(name for name, _ in report.images.accepted) == ["a.png", "negative.png", "pics/b.jpg"]
    skipped = dict(report.skipped)
    assert skipped["../evil.png"].startswith("unsafe name in the zip")
    assert skipped["set/unlisted.png"] == "not listed in the COCO file; not imported"
    with read_session(store.engine) as session:
        assert len(session.exec(select(Image)).all()) == 3


def test_zip_without_exactly_one_json_is_refused(store):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.json", "{}")
        archive.writestr("b.json", "{}")
    report = import_coco_zip(store.engine, store.media_dir, store.project_id, buffer.getvalue(), MB, zip_name="set.zip")
    assert report.skipped == [("set.zip", "the zip must hold exactly one COCO .json file (found: a.json, b.json)")]


def test_import_export_import_is_lossless_and_pycocotools_reads_it(store, tmp_path):
    document, images, _ = scenario()
    import_coco(store.engine, store.media_dir, store.project_id, json.dumps(document).encode(), images, MB)

    json_path = export_coco(store.engine, store.media_dir, store.project_id, tmp_path / "export")

    coco = COCO(str(json_path))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["Rust", "crack", "dent"]
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == 5
    for annotation in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(annotation).sum() == annotation["area"]
        assert coco_mask.toBbox(coco.annToRLE(annotation)).tolist() == annotation["bbox"]

    second = make_project(store.engine, "again")
    report = import_coco(store.engine, store.media_dir, second, json_path, tmp_path / "export" / "images", MB)
    assert report.annotations_imported == 5 and report.skipped == []

    def by_content(project_id):
        return sorted(
            (image_name_sha[row.image_id], concept, row.rle, row.bbox, row.area, row.iscrowd)
            for row, concept, _ in stored_annotations(store.engine, project_id)
        )

    with read_session(store.engine) as session:
        image_name_sha = {i.id: i.sha256 for i in session.exec(select(Image))}
    first_rows, second_rows = by_content(store.project_id), by_content(second)
    assert first_rows == second_rows
    for (_, _, rle_1, *_), (_, _, rle_2, *_) in zip(first_rows, second_rows):
        assert np.array_equal(rle_to_mask(json.loads(rle_1)), rle_to_mask(json.loads(rle_2)))


def test_polygons_reaching_outside_are_clipped_to_the_part_inside():
    """Rasterise on a canvas big enough for the whole polygon, then crop: the same pixels up to the
    rasteriser's rounding along the edges cut at the image border (clip_ring moves their end points)."""
    inside = rle_to_mask(polygons_to_rle([OUT_OF_BOUNDS], 48, 64))
    shifted = [v + 20 for v in OUT_OF_BOUNDS]
    whole = rle_to_mask(polygons_to_rle([shifted], 48 + 40, 64 + 40))[20:68, 20:84]
    assert inside.any() and (inside ^ whole).sum() <= 0.01 * whole.sum()
    inside_polygon = [10.0, 10.0, 50.0, 12.0, 30.0, 40.0]  # not touched by the clip: exactly pycocotools' pixels
    assert np.array_equal(rle_to_mask(polygons_to_rle([inside_polygon], 48, 64)),
                          coco_mask.decode(coco_mask.frPyObjects([inside_polygon], 48, 64))[:, :, 0].astype(bool))
