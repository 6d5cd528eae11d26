"""The "Projects & Data" handlers on a real migrated SQLite file and media folder,
called as the browser would (plain values in, plain values / gr.update out)."""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from app.settings import Settings
from app.studio import open_studio
from app.ui import data_handlers as handlers
from app.ui import data_io
from app.ui.messages import REFUSED


@pytest.fixture
def studio(tmp_path, monkeypatch):
    # thumbnails and export zips go under the system temp dir: keep them in this test's folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data"))
    yield studio
    studio.engine.dispose()


def make_project(studio, name: str = "Roads") -> int:
    update, _, _ = handlers.create_project(studio, name)
    return update["value"]


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A small picture whose pixels (hence hash) depend on `seed`; format from the suffix."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)
    return path


def concept_names(studio, project_id: int) -> list[str]:
    return [row[0] for row in handlers.concept_rows(studio, project_id)]


NO_CHANGE = {"__type__": "update"}  # gr.update() with nothing in it


def assert_refused(outputs, reason: str) -> None:
    """A refused action: every other output unchanged, the status names the reason."""
    *others, status = outputs if isinstance(outputs, tuple) else (outputs,)
    assert status.startswith(REFUSED) and reason in status, status
    assert all(other == NO_CHANGE for other in others), others


# ---------------------------------------------------------------- projects and concepts

def test_create_project_selects_it_and_refuses_empty_or_duplicate_names(studio):
    update, cleared, status = handlers.create_project(studio, "  Road   cracks ")
    assert update["choices"] == [("Road cracks", update["value"])]
    assert cleared == "" and "Road cracks" in status
    assert_refused(handlers.create_project(studio, "   "), "cannot create the project: project name is empty.")
    assert_refused(handlers.create_project(studio, "Road cracks "), "a project named 'Road cracks' already exists")
    second, _, _ = handlers.create_project(studio, "Bridges")
    assert [name for name, _ in second["choices"]] == ["Road cracks", "Bridges"]
    assert handlers.refresh_projects(studio, None)["value"] == second["value"]  # newest when none kept
    assert handlers.refresh_projects(studio, update["value"])["value"] == update["value"]


def test_concepts_add_rename_delete_with_readable_errors(studio):
    assert_refused(handlers.add_concept(studio, None, "crack"), "cannot add the concept: choose a project first")
    project_id = make_project(studio)
    rows, dropdown, cleared, status = handlers.add_concept(studio, project_id, "crack")
    assert rows[0][0] == "crack" and "#e6194b" in rows[0][1] and cleared == "" and "crack" in status
    handlers.add_concept(studio, project_id, "pothole")
    assert_refused(handlers.add_concept(studio, project_id, "Crack"), "already has a concept named 'crack'")
    assert_refused(handlers.add_concept(studio, project_id, ""), "concept phrase is empty")

    crack_id = dict(dropdown["choices"])["crack"]
    assert handlers.pick_concept(studio, project_id, crack_id) == ("crack", "#e6194b")
    rows, dropdown, _ = handlers.rename_concept(studio, project_id, crack_id, "hairline crack", "#00FF00")
    assert rows[0] == ["hairline crack", '<span style="color:#00ff00">&#9632;</span> #00ff00']
    assert dropdown["value"] == crack_id
    assert_refused(
        handlers.rename_concept(studio, project_id, crack_id, "POTHOLE", None), "already has a concept named 'pothole'"
    )
    assert_refused(handlers.rename_concept(studio, project_id, None, "x", None), "choose the concept to rename")

    # delete takes two clicks on the same concept
    rows, _, status, pending = handlers.delete_concept(studio, project_id, crack_id, None)
    assert pending == crack_id and "Click **Delete** again" in status
    assert concept_names(studio, project_id) == ["hairline crack", "pothole"]
    rows, dropdown, status, pending = handlers.delete_concept(studio, project_id, crack_id, pending)
    assert pending is None and "Deleted concept `hairline crack` and 0 annotations" in status
    assert [row[0] for row in rows] == ["pothole"] and [name for name, _ in dropdown["choices"]] == ["pothole"]
    *outputs, pending = handlers.delete_concept(studio, project_id, crack_id, crack_id)
    assert_refused(tuple(outputs), f"concept {crack_id} is not in this project")
    assert pending is None


# ---------------------------------------------------------------- uploads

def test_upload_reports_accepted_duplicate_and_refused_files_by_name(studio, tmp_path):
    project_id = make_project(studio)
    assert_refused(data_io.upload_images(studio, None, [str(write_image(tmp_path / "a.png", 1))]), "choose a project")
    assert_refused(data_io.upload_images(studio, project_id, []), "choose image files")
    good = [write_image(tmp_path / "a.png", 1), write_image(tmp_path / "b.jpg", 2)]
    fake = tmp_path / "page.png"
    fake.write_text("<!doctype html><html><body>hi</body></html>")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    report = data_io.upload_images(studio, project_id, [str(p) for p in [*good, fake, empty]])
    assert report.startswith("**2 added**, 0 already in the project, 2 refused.")
    assert "- `page.png`: not an image: looks like HTML" in report
    assert "- `empty.jpg`: empty file" in report

    again = data_io.upload_images(studio, project_id, [str(good[0])])
    assert again.startswith("**0 added**, 1 already in the project, 0 refused.") and "- `a.png`" in again
    assert handlers.gallery_page(studio, project_id, "all", 1)[2] == "Page 1 of 1 · 2 images"


def test_zip_upload_is_expanded_next_to_plain_files(studio, tmp_path):
    project_id = make_project(studio)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for seed in (10, 11):
            zipped.write(write_image(tmp_path / f"z{seed}.png", seed), f"photos/z{seed}.png")
        zipped.writestr("photos/readme.txt", "not a picture")
        zipped.writestr("../evil.png", b"x")
    report = data_io.upload_images(studio, project_id, [str(write_image(tmp_path / "plain.png", 3)), str(archive)])
    assert report.startswith("**3 added**, 0 already in the project, 2 refused.")
    assert "- `photos/readme.txt`: not an image: looks like text" in report
    assert "- `../evil.png`: unsafe name in the zip" in report
    items, _, label, _ = handlers.gallery_page(studio, project_id, "all", 1)
    assert label == "Page 1 of 1 · 3 images"
    assert [caption.split(" · ")[0] for _, caption in items] == ["plain.png", "photos/z10.png", "photos/z11.png"]


# ---------------------------------------------------------------- COCO import

def coco_document() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "images/scene.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "gone.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 1, "name": "crack"}, {"id": 2, "name": "pothole"}],
        "annotations": [
            # reaches past the top-left corner: clipped to the image
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[-5, -5, 20, -5, 20, 20, -5, 20]],
             "bbox": [-5, -5, 25, 25], "area": 625, "iscrowd": 0},
            # a box only: stored as a box-shaped mask
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [22, 5, 10, 8], "area": 80, "iscrowd": 0},
            {"id": 13, "image_id": 1, "category_id": 99, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0},
            {"id": 14, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0},
        ],
    }


def test_coco_import_from_json_plus_images_reports_skips_by_reason(studio, tmp_path):
    project_id = make_project(studio)
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps(coco_document()))
    image_path = write_image(tmp_path / "scene.png", 5)
    report = data_io.import_dataset(studio, project_id, [str(json_path), str(image_path)])
    assert report.startswith("**2 annotations imported**; images: 1 added, 0 already in the project, 0 refused.")
    assert "New concepts: `crack`, `pothole`." in report
    assert "Clipped to their image (they reached outside it): 1 annotation." in report
    assert "Stored as box-shaped masks (they had only a box): 1 annotation." in report
    assert "Skipped (3):" in report
    assert "- `gone.png`: missing from the upload" in report
    assert "- `annotation 13`: unknown category id 99" in report
    assert "- `annotation 14`: its image gone.png was not imported (missing from the upload)" in report
    assert concept_names(studio, project_id) == ["crack", "pothole"]

    items, _, label, _ = handlers.gallery_page(studio, project_id, "reviewed", 1)
    assert label == "Page 1 of 1 · 1 reviewed image"
    assert items[0][1].startswith("images/scene.png · ") and items[0][1].endswith(" · 2 annotations")
    assert handlers.gallery_page(studio, project_id, "unlabelled", 1)[2] == "Page 1 of 1 · 0 unlabelled images"


def test_coco_import_from_a_zip_and_refusal_of_a_bad_mix(studio, tmp_path):
    project_id = make_project(studio)
    archive = tmp_path / "dataset.zip"
    document = coco_document()
    document["images"] = document["images"][:1]
    document["annotations"] = document["annotations"][:2]
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("dataset/annotations.json", json.dumps(document))
        zipped.write(write_image(tmp_path / "scene.png", 5), "dataset/images/scene.png")
        zipped.write(write_image(tmp_path / "extra.png", 6), "dataset/images/extra.png")
    report = data_io.import_dataset(studio, project_id, [str(archive)])
    assert report.startswith("**2 annotations imported**; images: 1 added")
    assert "- `dataset/images/extra.png`: not listed in the COCO file; not imported" in report

    mixed = data_io.import_dataset(studio, project_id, [str(archive), str(tmp_path / "scene.png")])
    assert_refused(mixed, "one .json plus its image files (got: dataset.zip, scene.png)")
    assert_refused(data_io.import_dataset(studio, project_id, None), "(got: nothing)")
    assert_refused(data_io.import_dataset(studio, "", [str(archive)]), "choose a project first")


# ---------------------------------------------------------------- gallery

def test_gallery_pages_of_48_with_captions_thumbnails_and_split_change(studio, tmp_path):
    project_id = make_project(studio)
    paths = [str(write_image(tmp_path / f"img{index:02d}.png", index, size=(300, 200))) for index in range(50)]
    data_io.upload_images(studio, project_id, paths)

    items, page_ids, label, page = handlers.gallery_page(studio, project_id, "all", 1)
    assert (len(items), len(page_ids), label, page) == (48, 48, "Page 1 of 2 · 50 images", 1)
    first_thumb, first_caption = items[0]
    assert first_caption in ("img00.png · train · 0 annotations", "img00.png · val · 0 annotations")
    with Image.open(first_thumb) as thumb:
        assert max(thumb.size) == handlers.THUMBNAIL_SIDE and thumb.size == (256, 171)
    assert not Path(first_thumb).is_relative_to(studio.settings.DATA_DIR)  # DATA_DIR is never served

    items, page_ids, label, page = handlers.turn_page(studio, project_id, "all", 1, step=1)
    assert [caption.split(" · ")[0] for _, caption in items] == ["img48.png", "img49.png"]
    assert (label, page) == ("Page 2 of 2 · 50 images", 2)
    assert handlers.turn_page(studio, project_id, "all", 2, step=1)[3] == 2  # clamped at the last page
    assert handlers.gallery_page(studio, project_id, "all", -3)[3] == 1
    assert handlers.gallery_page(studio, None, "all", 1) == ([], [], "No project chosen.", 1)

    image_id, description, split = handlers.select_image(studio, page_ids, 1)
    assert image_id == page_ids[1] and "img49.png" in description and "300x200 px" in description
    other = "val" if split == "train" else "train"
    assert handlers.set_split(studio, image_id, other) == (
        f"`img49.png`: 300x200 px, split **{other}**, unlabelled. Moved to **{other}**."
    )
    assert handlers.turn_page(studio, project_id, "all", 2, step=0)[0][1][1] == f"img49.png · {other} · 0 annotations"
    assert_refused(handlers.set_split(studio, image_id, "test"), "split 'test' is not one of train, val")
    assert_refused(handlers.set_split(studio, None, "train"), "click an image in the gallery first")
    assert handlers.select_image(studio, page_ids, 7)[0] is None


# ---------------------------------------------------------------- export

def unzip(archive: str, into: Path) -> Path:
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(into)
    (top,) = into.iterdir()
    return top


def test_exports_are_zips_with_the_project_in_each_format(studio, tmp_path):
    project_id = make_project(studio, "Road cracks/2024")
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps(coco_document()))
    data_io.import_dataset(studio, project_id, [str(json_path), str(write_image(tmp_path / "scene.png", 5))])
    data_io.upload_images(studio, project_id, [str(write_image(tmp_path / "negative.png", 8))])
    assert data_io.export_project(studio, None, "COCO")[0] is None
    assert_refused(data_io.export_project(studio, None, "COCO")[1], "cannot export: choose a project first")
    assert_refused(data_io.export_project(studio, project_id, "VOC")[1], "unknown export format 'VOC'")

    coco_zip, status = data_io.export_project(studio, project_id, "COCO")
    assert status == ("COCO export of `Road cracks/2024` is ready: `Road-cracks-2024-coco.zip`, reviewed labels "
                      "(drawn, accepted or imported; unreviewed proposals left out).")
    assert Path(coco_zip).name == "Road-cracks-2024-coco.zip"
    assert Path(coco_zip).is_relative_to(tempfile.gettempdir())
    coco_dir = unzip(coco_zip, tmp_path / "coco")
    coco = COCO(str(coco_dir / "annotations.json"))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 2
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["crack", "pothole"]
    assert all((coco_dir / "images" / image["file_name"]).is_file() for image in coco.loadImgs(coco.getImgIds()))
    assert {int(coco.annToMask(a).sum()) for a in coco.loadAnns(coco.getAnnIds())} == {400, 80}

    yolo_dir = unzip(data_io.export_project(studio, project_id, "YOLO-seg")[0], tmp_path / "yolo")
    assert yaml.safe_load((yolo_dir / "data.yaml").read_text())["names"] == {0: "crack", 1: "pothole"}
    label_lines = [line for path in yolo_dir.glob("labels/*/*.txt") for line in path.read_text().splitlines()]
    assert sorted(line.split()[0] for line in label_lines) == ["0", "1"]
    assert len(list(yolo_dir.glob("images/*/*.png"))) == 2

    masks_dir = unzip(data_io.export_project(studio, project_id, "PNG masks")[0], tmp_path / "masks")
    labelmap = (masks_dir / "labelmap.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in labelmap[1:]] == ["background", "crack", "pothole"]
    instance_maps = [np.array(Image.open(path)) for path in sorted(masks_dir.glob("SegmentationObject/*.png"))]
    assert sorted(int(values.max()) for values in instance_maps) == [0, 2]  # the negative, and scene's 2 instances
    assert_refused(data_io.export_project(studio, project_id, "YOLO-seg", include_proposals=True)[1],
                   "only a COCO export can mark unreviewed proposals")
