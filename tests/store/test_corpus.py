"""The corpus in tests/data (files as Label Studio, Roboflow and COCO itself write them)
imports with its flags, parts, holes and crowds read right, and import -> export ->
import keeps masks, boxes, ids, file names and supercategories, in all three formats."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from app.store.archive import FileSource
from app.store.coco_export import export_coco
from app.store.coco_import import import_coco, import_coco_zip
from app.store.masks import polygons_to_rle, rle_to_mask
from app.store.png_mask_export import export_png_masks
from app.store.png_mask_import import import_png_masks
from app.store.yolo_export import export_yolo_seg
from app.store.yolo_import import import_yolo_seg
from tests.store.corpus_support import CORPUS, MB, masks_by_image, project_content, zip_folder
from tests.store.test_uploads import make_project

LABEL_STUDIO = (CORPUS / "label_studio" / "result.json", CORPUS / "label_studio")
ROBOFLOW = (CORPUS / "roboflow" / "train" / "_annotations.coco.json", CORPUS / "roboflow" / "train")
PARTS = (CORPUS / "parts_holes_crowds" / "instances.json", CORPUS / "parts_holes_crowds" / "images")
RECT = [4.0, 4.0, 16.0, 4.0, 16.0, 12.0, 4.0, 12.0]


@pytest.fixture
def store(engine, tmp_path):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    yield SimpleNamespace(engine=engine, media_dir=media_dir, tmp=tmp_path,
                          project=lambda name: make_project(engine, name))


def imported(store, dataset, name="source"):
    project_id = store.project(name)
    report = import_coco(store.engine, store.media_dir, project_id, dataset[0], dataset[1], MB)
    return project_id, report


def test_label_studio_string_flags_and_categories_from_zero(store):
    project_id, report = imported(store, LABEL_STUDIO)

    assert report.annotations_imported == 4 and report.skipped == []
    content = project_content(store.engine, project_id)
    assert content["concepts"] == [("crack", 0, ""), ("pothole", 1, "")], "category 0 is used, so it is a concept"
    crowds = {(image, concept): iscrowd for image, concept, _, _, _, iscrowd in content["annotations"]}
    assert crowds == {("images/0f3c9a2e-scene.jpg", "crack"): False, ("images/0f3c9a2e-scene.jpg", "pothole"): False,
                      ("images/7b1d44c0-street.jpg", "pothole"): True, ("images/7b1d44c0-street.jpg", "crack"): False}


def test_roboflow_dataset_category_zero_is_the_supercategory_not_a_class(store, tmp_path):
    project_id, report = imported(store, ROBOFLOW)

    assert report.annotations_imported == 2 and report.skipped == []
    assert report.concepts_created == ["crack", "pothole"]
    assert any("category 0 'road-defects' is the dataset-level group" in note for note in report.notes)
    content = project_content(store.engine, project_id)
    assert content["concepts"] == [("crack", 1, "road-defects"), ("pothole", 2, "road-defects")]
    yolo = export_yolo_seg(store.engine, store.media_dir, project_id, tmp_path / "yolo")
    assert yaml.safe_load(yolo.read_text())["names"] == {0: "crack", 1: "pothole"}


def test_parts_holes_and_uncompressed_crowds_are_stored_exactly(store):
    project_id, report = imported(store, PARTS)

    assert report.annotations_imported == 3 and report.skipped == []
    document = json.loads(PARTS[0].read_text())
    by_id = {a["id"]: a for a in document["annotations"]}
    stored = masks_by_image(store.engine, project_id)["yard.png"]
    crowd = [(c, m) for c, crowd, m in stored if crowd]
    stones = [m for c, crowd, m in stored if c == "stone"]
    parts = rle_to_mask(polygons_to_rle(by_id[100]["segmentation"], 48, 64))
    donut = coco_mask.decode(by_id[101]["segmentation"] | {"counts": by_id[101]["segmentation"]["counts"].encode()})
    crowd_mask = coco_mask.decode(coco_mask.frPyObjects(by_id[102]["segmentation"], 48, 64)).astype(bool)
    assert sorted(int(m.sum()) for m in stones) == sorted([int(parts.sum()), int(donut.sum())])
    assert any(np.array_equal(m, parts) for m in stones), "both parts in one annotation"
    assert any(np.array_equal(m, donut.astype(bool)) for m in stones), "the hole stays a hole"
    assert len(crowd) == 1 and crowd[0][0] == "people" and np.array_equal(crowd[0][1], crowd_mask)


@pytest.mark.parametrize("dataset", [LABEL_STUDIO, ROBOFLOW, PARTS], ids=["label_studio", "roboflow", "parts"])
def test_coco_round_trip_keeps_masks_boxes_ids_names_and_supercategories(store, dataset):
    first, _ = imported(store, dataset, "first")
    json_path = export_coco(store.engine, store.media_dir, first, store.tmp / "export")

    exported = json.loads(json_path.read_text())
    source = json.loads(dataset[0].read_text())
    kept = {c["id"]: (c["name"], c.get("supercategory", "")) for c in exported["categories"]}
    for category in source["categories"]:
        if category["id"] in kept:
            supercategory = category.get("supercategory", "")
            assert kept[category["id"]] == (category["name"], "" if supercategory == "none" else supercategory)
    source_images = {i["id"]: i["file_name"] for i in source["images"]}
    assert {i["id"]: i["original_name"] for i in exported["images"]} == source_images, "ids and names kept"
    for image in exported["images"]:
        assert image["file_name"].rsplit(".", 1)[0] == source_images[image["id"]].rsplit(".", 1)[0]
        assert (store.tmp / "export" / "images" / image["file_name"]).is_file()
    COCO(str(json_path))  # pycocotools reads it

    second = store.project("second")
    report = import_coco(store.engine, store.media_dir, second, json_path, store.tmp / "export" / "images", MB)
    assert report.skipped == [] and report.annotations_imported == len(exported["annotations"])
    assert project_content(store.engine, second) == project_content(store.engine, first)
    again = json.loads(export_coco(store.engine, store.media_dir, second, store.tmp / "again").read_text())
    strip = lambda doc: ([{k: v for k, v in c.items() if k != "color"} for c in doc["categories"]],  # noqa: E731
                         [{k: v for k, v in i.items() if k != "status"} for i in doc["images"]],
                         [{k: v for k, v in a.items() if k != "id"} for a in doc["annotations"]])
    assert strip(again) == strip(exported)


def test_coco_zip_round_trip_of_the_roboflow_folder(store):
    project_id = store.project("zip")
    archive = zip_folder(ROBOFLOW[1], store.tmp / "roboflow")
    report = import_coco_zip(store.engine, store.media_dir, project_id, archive, MB)
    assert report.annotations_imported == 2 and report.skipped == []


def test_yolo_seg_round_trip_through_our_export(store):
    first, _ = imported(store, LABEL_STUDIO, "first")
    export_yolo_seg(store.engine, store.media_dir, first, store.tmp / "yolo1")
    rows = sorted(line.split()[0] for path in (store.tmp / "yolo1").glob("labels/*/*.txt")
                  for line in path.read_text().splitlines())
    assert rows == ["0", "0", "1"], "the crowd is left out, as Ultralytics does"

    second = store.project("second")
    report = import_yolo_seg(store.engine, store.media_dir, second, FileSource.from_folder(store.tmp / "yolo1", MB))
    assert report.skipped == [] and report.annotations_imported == 3
    before, after = masks_by_image(store.engine, first), masks_by_image(store.engine, second)
    for name, items in before.items():
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        (match,) = [key for key in after if key.rsplit("/", 1)[-1].rsplit(".", 1)[0] == stem]
        plain = [(concept, mask) for concept, crowd, mask in items if not crowd]
        assert [c for c, _, _ in after[match]] == [c for c, _ in plain]
        assert all(np.array_equal(a[2], b[1]) for a, b in zip(after[match], plain)), "exact outlines, exact masks"

    export_yolo_seg(store.engine, store.media_dir, second, store.tmp / "yolo2")
    third = store.project("third")
    import_yolo_seg(store.engine, store.media_dir, third, FileSource.from_folder(store.tmp / "yolo2", MB))
    assert [item[1:] for item in project_content(store.engine, third)["annotations"]] == \
        [item[1:] for item in project_content(store.engine, second)["annotations"]], "a second round changes nothing"


def test_png_masks_round_trip_through_our_export(store):
    first, _ = imported(store, ROBOFLOW, "first")
    export_png_masks(store.engine, store.media_dir, first, store.tmp / "png1")

    second = store.project("second")
    source = FileSource.from_folder(store.tmp / "png1", MB)
    report = import_png_masks(store.engine, store.media_dir, second, source)
    assert report.skipped == [] and report.annotations_imported == 2
    before, after = masks_by_image(store.engine, first), masks_by_image(store.engine, second)
    assert sorted((c, m.tobytes()) for items in before.values() for c, _, m in items) == \
        sorted((c, m.tobytes()) for items in after.values() for c, _, m in items), "masks exact"
    assert [c[0] for c in project_content(store.engine, second)["concepts"]] == ["crack", "pothole"]

    export_png_masks(store.engine, store.media_dir, second, store.tmp / "png2")
    for folder in ("SegmentationClass", "SegmentationObject"):
        first_files = sorted((store.tmp / "png1" / folder).iterdir())
        assert [p.read_bytes() for p in first_files] == [
            (store.tmp / "png2" / folder / p.name).read_bytes() for p in first_files]


def test_png_masks_with_crowds_say_the_ignored_pixels(store):
    first, _ = imported(store, LABEL_STUDIO, "first")
    export_png_masks(store.engine, store.media_dir, first, store.tmp / "png")
    second = store.project("second")
    report = import_png_masks(store.engine, store.media_dir, second, FileSource.from_folder(store.tmp / "png", MB))
    assert report.annotations_imported == 3
    assert "96 pixel(s) marked 255 (ignore / crowd) have no label and were not imported" in report.notes
