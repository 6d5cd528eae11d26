"""Hostile and malformed input (issue 13): each case is refused or skipped with a message
naming the item and the reason, and everything else of the same upload is kept."""
from __future__ import annotations

import errno
import io
import json
import time
import tracemalloc
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from sqlmodel import select

from app.store import media
from app.store.coco_import import import_coco, import_coco_zip
from app.store.db import read_session
from app.store.masks import rle_to_mask
from app.store.models import Annotation, Image
from app.store.projects import add_concept, create_project
from app.store.uploads import ImageBatch, ingest_files, ingest_zip
from tests.store.corpus_support import CORPUS, MB, project_content
from tests.store.test_uploads import image_bytes, make_project

GOOD = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]}


@pytest.fixture
def store(engine, tmp_path):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    yield SimpleNamespace(engine=engine, media_dir=media_dir, project_id=make_project(engine, "hostile"))


def coco(annotations, categories=None, images=None) -> bytes:
    return json.dumps({
        "images": images or [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "categories": categories or [{"id": 1, "name": "thing"}],
        "annotations": annotations,
    }).encode()


def pictures(*names):
    return {name: image_bytes("PNG", (10, 10), seed=index) for index, name in enumerate(names)}


def stored_count(store) -> int:
    with read_session(store.engine) as session:
        return len(session.exec(select(Annotation)).all())


def test_iscrowd_is_read_strictly_and_anything_else_is_refused_by_name(store):
    flags = [0, 1, True, False, "0", "1", "true", "FALSE", " True ", "maybe", 2, None, [1]]
    strip = lambda x: [[x, 0, x + 1, 0, x + 1, 20, x, 20]]  # noqa: E731  (a distinct column per annotation)
    annotations = [dict(GOOD, id=index, iscrowd=flag, segmentation=strip(index))
                   for index, flag in enumerate(flags) if flag is not None]
    annotations.append(dict(GOOD, id=99, segmentation=strip(19)))  # no iscrowd at all: not a crowd
    image = [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}]

    report = import_coco(store.engine, store.media_dir, store.project_id, coco(annotations, images=image),
                         {"a.png": image_bytes("PNG", (20, 20))}, MB)

    assert dict(report.skipped) == {"annotation 9": "iscrowd 'maybe' is not 0, 1, true or false",
                                    "annotation 10": "iscrowd 2 is not 0, 1, true or false",
                                    "annotation 12": "iscrowd [1] is not 0, 1, true or false"}
    with read_session(store.engine) as session:
        crowd = {row.id: row.iscrowd for row in session.exec(select(Annotation))}
    assert list(crowd.values()) == [False, True, True, False, False, True, True, False, True, False]


def test_the_206_byte_polygon_bomb_is_clipped_in_bounded_time_and_memory(store):
    raw = (CORPUS / "hostile" / "polygon_bomb.json").read_bytes()
    assert len(raw) < 210
    tracemalloc.start()
    started = time.monotonic()
    report = import_coco(store.engine, store.media_dir, store.project_id, raw, CORPUS / "hostile", MB)
    elapsed, (_, peak) = time.monotonic() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.annotations_imported == 1 and report.clipped == 1
    assert peak < 30 * MB and elapsed < 30, (peak, elapsed)
    with read_session(store.engine) as session:
        (row,) = session.exec(select(Annotation)).all()
    assert rle_to_mask(json.loads(row.rle)).all(), "the triangle covers the whole 10x10 image"


def test_work_per_polygon_is_bounded_and_named(store):
    zigzag = [value for step in range(4000) for value in (step % 2 * 9, step / 400)]  # 4000 points, 36,000 px of edges
    many = [float(v % 10) for v in range(2 * 100_001)]
    annotations = [dict(GOOD, id=1, segmentation=[zigzag]), dict(GOOD, id=2, segmentation=[many]), dict(GOOD, id=3)]
    report = import_coco(store.engine, store.media_dir, store.project_id, coco(annotations), pictures("a.png"), MB)
    skipped = dict(report.skipped)
    assert skipped["annotation 1"].startswith("polygon outline is 36,00") and \
        skipped["annotation 1"].endswith("at most 1,280 px (64 x (width + height))")
    assert skipped["annotation 2"] == "polygon has 100,001 points; at most 100,000 per annotation"
    assert report.annotations_imported == 1


def test_one_overflowing_bbox_is_a_skipped_item_not_an_abort(store):
    annotations = [dict(GOOD, id=1), {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1e308, 1e308, 1e308, 1e308]},
                   {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 1e308, 1e308]},
                   {"id": 4, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1e308, 0, 0, 1e308]]},
                   {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1e308, 0, 1e308, 1e308, 0, 1e308]]}]
    report = import_coco(store.engine, store.media_dir, store.project_id, coco(annotations), pictures("a.png"), MB)
    assert dict(report.skipped) == {"annotation 2": "box covers no pixel of the image (zero area)",
                                    "annotation 5": "polygon covers no pixel of the image (zero area)"}
    assert report.annotations_imported == 3 and report.clipped == 2


def test_nul_and_invisible_names_are_refused_and_the_rest_imported(store):
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "bad\x00name"}, {"id": 3, "name": "\u200b\u200b"},
                  {"id": 4, "name": "ok", "supercategory": "x\x00"}]
    images = [{"id": 1, "file_name": "a.png", "width": 10, "height": 10},
              {"id": 2, "file_name": "b\x00.png", "width": 10, "height": 10}]
    annotations = [dict(GOOD, id=1), dict(GOOD, id=2, category_id=2), dict(GOOD, id=3, category_id=3),
                   dict(GOOD, id=4, image_id=2)]
    files = pictures("a.png") | {"b\x00.png": image_bytes("PNG", (10, 10), seed=5)}

    report = import_coco(store.engine, store.media_dir, store.project_id,
                         coco(annotations, categories, images), files, MB)

    skipped = dict(report.skipped)
    assert skipped["category 2"] == "category name 'bad\\x00name' contains the control character U+0000 at position 3"
    assert skipped["category 3"] == "category name '\\u200b\\u200b' has no visible character (only zero-width or " \
                                    "format characters)"
    assert skipped["category 4"].startswith("supercategory 'x\\x00' contains the control character U+0000")
    assert skipped["annotation 2"].startswith("its category 2 was not imported (category name 'bad")
    assert skipped["b\x00.png"] == "file name contains the control character U+0000 at position 1"
    assert skipped["annotation 4"].startswith("its image b\x00.png was not imported (file name contains")
    assert report.annotations_imported == 1 and [name for name, _ in report.images.accepted] == ["a.png"]
    for bad in ("a\x00b", "\u200b", "\ufeff\u2060 "):
        with pytest.raises(ValueError, match="control character|no visible character|is empty"):
            create_project(store.engine, bad)
        with pytest.raises(ValueError, match="control character|no visible character|is empty"):
            add_concept(store.engine, store.project_id, bad)
    assert add_concept(store.engine, store.project_id, "zero\u200dwidth joiner inside").name == "zero\u200dwidth joiner inside"


def test_identical_pixels_are_merged_and_the_report_says_which_and_why(store):
    picture = image_bytes("PNG", (10, 10), seed=3)
    images = [{"id": 1, "file_name": "a.png", "width": 10, "height": 10},
              {"id": 2, "file_name": "copy-of-a.png", "width": 10, "height": 10}]
    annotations = [dict(GOOD, id=1), dict(GOOD, id=2, image_id=2, segmentation=[[0, 0, 3, 0, 3, 3]])]
    report = import_coco(store.engine, store.media_dir, store.project_id, coco(annotations, images=images),
                         {"a.png": picture, "copy-of-a.png": picture}, MB)
    assert report.images.duplicates == [("copy-of-a.png", "a.png")]
    assert "copy-of-a.png: same pixels as a.png, already in this project: stored once, as a.png" in report.messages()
    assert report.annotations_imported == 2
    assert list(project_content(store.engine, store.project_id)["images"]) == ["a.png"]


def test_a_full_disk_stops_the_upload_keeps_what_was_stored_and_names_the_rest(store, monkeypatch):
    real_write = media.write_atomically
    written = []

    def write_until_full(path, data, durable=True):
        if len(written) == 14:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data, durable)
        written.append(path)

    monkeypatch.setattr(media, "write_atomically", write_until_full)
    monkeypatch.setattr(ImageBatch, "BATCH_IMAGES", 5)  # images are stored 5 at a time: file 15 is in batch 3
    files = [(f"photo-{index:02}.png", image_bytes("PNG", (12, 12), seed=index)) for index in range(20)]

    report = ingest_files(store.engine, store.media_dir, store.project_id, files, MB)

    assert [name for name, _ in report.accepted] == [f"photo-{index:02}.png" for index in range(10)]
    assert report.not_tried == [f"photo-{index:02}.png" for index in range(10, 20)]
    assert report.stopped.startswith("the disk of the media folder is full (No space left on device) while "
                                     "storing photo-10.png; what was stored before it is kept")
    assert len(project_content(store.engine, store.project_id)["images"]) == 10
    assert all(path.is_file() for path in written)
    assert report.messages()[-1].startswith("stopped: the disk of the media folder is full")

    document = coco([dict(GOOD, id=index, image_id=index) for index in range(30, 33)],
                    images=[{"id": index, "file_name": f"c{index}.png"} for index in range(30, 33)])
    imported = import_coco(store.engine, store.media_dir, store.project_id, document,
                           {f"c{index}.png": image_bytes("PNG", (10, 10), seed=index) for index in range(30, 33)}, MB)
    assert imported.images.not_tried == ["c30.png", "c31.png", "c32.png"]
    assert imported.skipped[-1][1].startswith("the import stopped at a full disk; free space and import again")


def test_a_zip_over_the_member_cap_is_refused_unread(store):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(30):
            archive.writestr(f"img-{index}.png", image_bytes("PNG", (8, 8), seed=index))
    upload = ingest_zip(store.engine, store.media_dir, store.project_id, buffer.getvalue(), MB, zip_name="big.zip",
                        max_members=20)
    assert upload.refused == [("big.zip", "the zip holds 30 files, over the limit of 20 for one upload "
                                          "(MAX_ZIP_MEMBERS); split it into smaller zips. Nothing from it was stored")]
    imported = import_coco_zip(store.engine, store.media_dir, store.project_id, buffer.getvalue(), MB,
                               zip_name="big.zip", max_members=20)
    assert imported.skipped[0][0] == "big.zip" and "over the limit of 20" in imported.skipped[0][1]
    assert project_content(store.engine, store.project_id)["images"] == {}


def test_progress_is_reported_for_images_then_annotations(store):
    document = coco([dict(GOOD, id=index) for index in range(60)])
    calls = []
    import_coco(store.engine, store.media_dir, store.project_id, document, pictures("a.png"), MB,
                on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(25, 61), (50, 61), (61, 61)]
    assert stored_count(store) == 1, "60 copies of one mask are one annotation"


def test_unreviewed_proposals_are_left_out_of_exports_unless_asked_for(store, tmp_path):
    from app.store.annotations import save_annotation
    from app.store.coco_export import export_coco
    from tests.store.conftest import box_rle

    report = ingest_files(store.engine, store.media_dir, store.project_id, [("a.png", image_bytes("PNG", (40, 30)))], MB)
    concept = add_concept(store.engine, store.project_id, "crack")
    image_id = report.image_ids["a.png"]
    drawn = save_annotation(store.engine, image_id=image_id, concept_id=concept.id, rle=box_rle(30, 40, 1, 1, 5, 5))
    proposal = save_annotation(store.engine, image_id=image_id, concept_id=concept.id,
                               rle=box_rle(30, 40, 10, 10, 5, 5), source="model", score=0.75)

    default = json.loads(export_coco(store.engine, store.media_dir, store.project_id, tmp_path / "a").read_text())
    assert [(a["id"], a["source"]) for a in default["annotations"]] == [(drawn.id, "human")]
    full = json.loads(export_coco(store.engine, store.media_dir, store.project_id, tmp_path / "b",
                                  include_proposals=True).read_text())
    assert [(a["id"], a["source"], a.get("score")) for a in full["annotations"]] == [
        (drawn.id, "human", None), (proposal.id, "model", 0.75)]
    assert np.array_equal(np.array(full["annotations"][0]["bbox"]), [1, 1, 5, 5])
    with read_session(store.engine) as session:
        assert session.exec(select(Image)).one().status == "proposed"  # a pending proposal awaits review


def test_a_full_disk_stops_yolo_and_png_mask_imports_naming_what_was_not_stored(store, tmp_path, monkeypatch):
    from app.store.archive import FileSource
    from app.store.png_mask_export import export_png_masks
    from app.store.png_mask_import import import_png_masks
    from app.store.yolo_export import export_yolo_seg
    from app.store.yolo_import import import_yolo_seg

    folder = CORPUS / "roboflow" / "train"
    import_coco(store.engine, store.media_dir, store.project_id, folder / "_annotations.coco.json", folder, MB)
    export_yolo_seg(store.engine, store.media_dir, store.project_id, tmp_path / "yolo")
    export_png_masks(store.engine, store.media_dir, store.project_id, tmp_path / "png")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media, "write_atomically", full)
    for importer, exported in ((import_yolo_seg, "yolo"), (import_png_masks, "png")):
        project_id = make_project(store.engine, f"full-{exported}")
        report = importer(store.engine, tmp_path / "other-media", project_id, FileSource.from_folder(tmp_path / exported, MB))
        assert report.images.stopped.startswith("the disk of the media folder is full"), exported
        assert len(report.images.not_tried) == 2 and report.annotations_imported == 0, exported
        assert project_content(store.engine, project_id)["images"] == {}


def test_ids_beyond_the_integer_column_and_hidden_names_are_handled(store, tmp_path):
    from app.store.coco_export import export_coco

    document = coco([dict(GOOD, id=1, image_id=10_000_000_000, category_id=2**40)],
                    categories=[{"id": 2**40, "name": "thing"}],
                    images=[{"id": 10_000_000_000, "file_name": "../.hidden.png", "width": 10, "height": 10}])
    files = {".hidden.png": image_bytes("PNG", (10, 10), seed=1)}
    report = import_coco(store.engine, store.media_dir, store.project_id, document, files, MB)
    assert dict(report.skipped) == {"../.hidden.png": "unsafe file name (absolute or containing '..')",
                                    "annotation 1": "its image ../.hidden.png was not imported (unsafe file name "
                                                    "(absolute or containing '..'))"}
    document = coco([dict(GOOD, id=1, image_id=10_000_000_000, category_id=2**40)],
                    categories=[{"id": 2**40, "name": "thing"}],
                    images=[{"id": 10_000_000_000, "file_name": "sub/.hidden.png", "width": 10, "height": 10}])
    report = import_coco(store.engine, store.media_dir, store.project_id, document,
                         {"sub/.hidden.png": image_bytes("PNG", (10, 10), seed=1)}, MB)
    assert report.annotations_imported == 1
    exported = json.loads(export_coco(store.engine, store.media_dir, store.project_id, tmp_path / "out").read_text())
    assert [c["id"] for c in exported["categories"]] == [1], "an id the column cannot hold gives way to the studio's"
    assert [i["file_name"] for i in exported["images"]] == ["sub/hidden.png"]
