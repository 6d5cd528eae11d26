"""Data tab handlers for the other formats and the new reports: YOLO-seg and PNG-mask
imports through their zips, progress, the zip member cap from settings, merged images,
and exports with or without unreviewed proposals."""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest

from app.settings import Settings
from app.store.annotations import save_annotation
from app.store.projects import list_concepts
from app.studio import open_studio
from app.ui import data_handlers as handlers
from app.ui import data_io
from tests.store.conftest import box_rle
from tests.ui.test_data_handlers import assert_refused, unzip, write_image

CORPUS = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def studio(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data", MAX_ZIP_MEMBERS=25))
    yield studio
    studio.engine.dispose()


def new_project(studio, name: str) -> int:
    return handlers.create_project(studio, name)[0]["value"]


def roboflow_project(studio, tmp_path) -> int:
    project_id = new_project(studio, "Roads")
    folder = CORPUS / "roboflow" / "train"
    paths = [str(folder / "_annotations.coco.json"), *(str(p) for p in sorted(folder.glob("*.jpg")))]
    calls = []
    report = data_io.import_dataset(studio, project_id, paths, "COCO", lambda *args, **kw: calls.append((args, kw)))
    assert report.startswith("**2 annotations imported**") and "dataset-level group" in report, report
    assert calls[-1] == (((4, 4),), {"desc": "Importing COCO"}), "progress reaches its total"
    return project_id


@pytest.mark.parametrize("export_format, import_format", [("YOLO-seg", "YOLO-seg"), ("PNG masks", "PNG masks")])
def test_yolo_and_png_mask_zips_import_what_we_export(studio, tmp_path, export_format, import_format):
    source = roboflow_project(studio, tmp_path)
    archive, status = data_io.export_project(studio, source, export_format)
    assert "is ready" in status

    target = new_project(studio, "Copy")
    report = data_io.import_dataset(studio, target, [archive], import_format)
    assert report.startswith("**2 annotations imported**; images: 2 added"), report
    assert [c.name for c in list_concepts(studio.engine, target)] == ["crack", "pothole"]
    assert_refused(data_io.import_dataset(studio, target, [archive, archive], import_format), "upload one .zip")
    assert_refused(data_io.import_dataset(studio, target, [archive], "VOC"), "unknown dataset format 'VOC'")


def test_a_zip_over_max_zip_members_is_refused_by_the_handlers(studio, tmp_path):
    project_id = new_project(studio, "Big")
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for index in range(30):
            zipped.writestr(f"img-{index}.txt", "x")
    report = data_io.upload_images(studio, project_id, [str(archive)])
    assert "- `big.zip`: the zip holds 30 files, over the limit of 25 for one upload (MAX_ZIP_MEMBERS)" in report
    assert_refused(data_io.import_dataset(studio, project_id, [str(archive)], "YOLO-seg"), "over the limit of 25")


def test_merged_images_are_named_in_the_import_report(studio, tmp_path):
    project_id = new_project(studio, "Twins")
    first = write_image(tmp_path / "first.png", 7)
    shutil.copyfile(first, tmp_path / "second.png")
    document = {"images": [{"id": 1, "file_name": "first.png"}, {"id": 2, "file_name": "second.png"}],
                "categories": [{"id": 1, "name": "crack"}],
                "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "twins.json").write_text(json.dumps(document))
    report = data_io.import_dataset(studio, project_id, [str(tmp_path / "twins.json"), str(first),
                                                         str(tmp_path / "second.png")])
    assert "Merged (same pixels, stored once; their annotations go onto that image):" in report
    assert "- `second.png`: same pixels as first.png, already in this project: stored once, as first.png" in report


def test_exports_leave_proposals_out_unless_asked_and_then_mark_them(studio, tmp_path):
    project_id = roboflow_project(studio, tmp_path)
    image_id = handlers.gallery_page(studio, project_id, "all", 1)[1][0]
    concept = list_concepts(studio.engine, project_id)[0]
    save_annotation(studio.engine, image_id=image_id, concept_id=concept.id, rle=box_rle(32, 48, 20, 30, 5, 5),
                    source="model", score=0.6)

    reviewed = json.loads((unzip(data_io.export_project(studio, project_id, "COCO")[0], tmp_path / "a")
                           / "annotations.json").read_text())
    assert sorted(a["source"] for a in reviewed["annotations"]) == ["import", "import"]
    archive, status = data_io.export_project(studio, project_id, "COCO", include_proposals=True)
    assert status.endswith("reviewed labels and unreviewed proposals (marked source 'model').")
    marked = json.loads((unzip(archive, tmp_path / "b") / "annotations.json").read_text())
    assert [(a["source"], a.get("score")) for a in marked["annotations"] if a["source"] == "model"] == [("model", 0.6)]
    assert {c["id"]: c["supercategory"] for c in marked["categories"]} == {1: "road-defects", 2: "road-defects"}
