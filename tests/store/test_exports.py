"""Exports: COCO with negatives and frozen snapshots, YOLO-seg polygons that rasterise
back onto the masks, PNG label maps with a legend; plus the contour tracer behind YOLO."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage
from pycocotools.coco import COCO

from app.store.annotations import check_mask
from app.store.coco_export import ExportError, dataset_snapshot, export_coco
from app.store.db import read_session, write_session
from app.store.masks import mask_to_rle, polygons_to_rle, rle_to_mask
from app.store.models import Annotation, AnnotationHistory, Concept, Image
from app.store.polygons import mask_to_polygons, trace_outer_boundary
from app.store.png_mask_export import export_png_masks
from app.store.uploads import ingest_files
from app.store.yolo_export import export_yolo_seg
from tests.store.test_uploads import image_bytes, make_project

MB = 1024 * 1024
H, W = 60, 80


def rectangle() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[5:20, 4:30] = True
    return mask


def disk() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - 40) ** 2 + (xx - 55) ** 2 < 14**2


def l_shape() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[30:58, 2:10] = True
    mask[50:58, 2:30] = True
    return mask


def two_blobs() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[2:12, 40:52] = True
    mask[4:14, 62:76] = True
    return mask


def read_png(path) -> np.ndarray:
    with PILImage.open(path) as image:
        return np.asarray(image)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def add_version(engine, image_id: int, concept_id: int, mask: np.ndarray, annotation_id: int | None = None,
                deleted: bool = False) -> int:
    """Create (annotation_id None) or bump an annotation, with its "saved" history row."""
    checked = check_mask(mask_to_rle(mask))  # the columns as the store writes them
    values = dict(concept_id=concept_id, rle=checked.rle_json, bbox=checked.bbox_json, deleted=deleted)
    with write_session(engine) as session:
        if annotation_id is None:
            row = Annotation(image_id=image_id, area=checked.area, revision=1, **values)
        else:
            row = session.get(Annotation, annotation_id)
            for key, value in values.items():
                setattr(row, key, value)
            row.revision += 1
        session.add(row)
        session.flush()
        session.add(AnnotationHistory(annotation_id=row.id, revision=row.revision, outcome="saved", concept_id=concept_id,
                                      rle=row.rle, bbox=row.bbox, deleted=deleted, author="test"))
        return row.id


@pytest.fixture
def labelled(engine, tmp_path):
    """One labelled 80x60 image (4 annotations, 2 concepts) and one unlabelled 50x50 negative."""
    media_dir = tmp_path / "media"
    project_id = make_project(engine, "exports")
    report = ingest_files(engine, media_dir, project_id,
                          [("scene.png", image_bytes("PNG", (W, H), seed=1)), ("empty.png", image_bytes("PNG", (50, 50)))], MB)
    image_id, negative_id = report.image_ids["scene.png"], report.image_ids["empty.png"]
    with write_session(engine) as session:
        crack, rust = Concept(project_id=project_id, name="crack"), Concept(project_id=project_id, name="rust")
        session.add_all([crack, rust])
        session.flush()
        concepts = {"crack": crack.id, "rust": rust.id}
        session.get(Image, image_id).split = "train"
        session.get(Image, negative_id).split = "val"
    shapes = {"rectangle": ("crack", rectangle()), "disk": ("rust", disk()),
              "l_shape": ("crack", l_shape()), "two_blobs": ("rust", two_blobs())}
    annotation_ids = {name: add_version(engine, image_id, concepts[concept], mask) for name, (concept, mask) in shapes.items()}
    yield SimpleNamespace(engine=engine, media_dir=media_dir, project_id=project_id, image_id=image_id,
                          negative_id=negative_id, concepts=concepts, shapes=shapes, annotation_ids=annotation_ids,
                          out=tmp_path / "out")


def exported_masks(json_path) -> dict[int, np.ndarray]:
    coco = COCO(str(json_path))
    return {a["id"]: coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds())}


def test_coco_export_has_negatives_stable_categories_and_linked_images(labelled):
    json_path = export_coco(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out)

    document = json.loads(json_path.read_text())
    assert [c["id"] for c in document["categories"]] == [labelled.concepts["crack"], labelled.concepts["rust"]]
    assert [(i["id"], i["file_name"]) for i in document["images"]] == [
        (labelled.image_id, "scene.png"), (labelled.negative_id, "empty.png")]
    masks = exported_masks(json_path)
    for name, (_, mask) in labelled.shapes.items():
        assert np.array_equal(masks[labelled.annotation_ids[name]], mask), name
    with read_session(labelled.engine) as session:
        stored = labelled.media_dir / session.get(Image, labelled.image_id).path
    assert os.path.samefile(labelled.out / "images" / "scene.png", stored), "hard link, not a copy"


def test_snapshot_export_is_frozen_while_people_keep_editing(labelled):
    ids = labelled.annotation_ids
    snapshot = dataset_snapshot(labelled.engine, labelled.project_id)
    assert snapshot == [[ids[name], 1] for name in ("rectangle", "disk", "l_shape", "two_blobs")]

    add_version(labelled.engine, labelled.image_id, labelled.concepts["crack"], np.roll(rectangle(), 7, axis=1),
                annotation_id=ids["rectangle"])
    add_version(labelled.engine, labelled.image_id, labelled.concepts["rust"], disk(), annotation_id=ids["disk"],
                deleted=True)
    newcomer = add_version(labelled.engine, labelled.image_id, labelled.concepts["rust"], l_shape())

    frozen = exported_masks(export_coco(labelled.engine, labelled.media_dir, labelled.project_id,
                                        labelled.out / "frozen", snapshot=snapshot))
    current = exported_masks(export_coco(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out / "now"))

    assert sorted(frozen) == sorted(ids.values())
    assert np.array_equal(frozen[ids["rectangle"]], rectangle()) and np.array_equal(frozen[ids["disk"]], disk())
    assert sorted(current) == sorted([ids["rectangle"], ids["l_shape"], ids["two_blobs"], newcomer])
    assert np.array_equal(current[ids["rectangle"]], np.roll(rectangle(), 7, axis=1))
    assert dataset_snapshot(labelled.engine, labelled.project_id) == [
        [ids["rectangle"], 2], [ids["l_shape"], 1], [ids["two_blobs"], 1], [newcomer, 1]]


def test_snapshot_leaves_out_unreviewed_model_proposals(labelled):
    from app.store.annotations import save_annotation

    ids = labelled.annotation_ids
    proposal = save_annotation(labelled.engine, image_id=labelled.image_id, concept_id=labelled.concepts["crack"],
                               rle=mask_to_rle(disk()), source="model", score=0.8)
    assert [row[0] for row in dataset_snapshot(labelled.engine, labelled.project_id)] == sorted(ids.values())

    accepted = save_annotation(labelled.engine, image_id=labelled.image_id, concept_id=labelled.concepts["crack"],
                               rle=mask_to_rle(disk()), annotation_id=proposal.id, base_revision=1, source="human")
    assert [accepted.id, 2] in dataset_snapshot(labelled.engine, labelled.project_id)


def test_snapshot_naming_unsaved_versions_is_refused(labelled):
    with pytest.raises(ExportError, match=f"annotation {labelled.annotation_ids['disk']} revision 5"):
        export_coco(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out,
                    snapshot=[[labelled.annotation_ids["disk"], 5]])
    with pytest.raises(ExportError, match="integer pairs"):
        export_coco(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out, snapshot=[["1", 1]])


def test_split_export_keeps_only_that_split(labelled):
    val = json.loads(export_coco(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out,
                                 split="val").read_text())
    assert [i["id"] for i in val["images"]] == [labelled.negative_id] and val["annotations"] == []


def test_yolo_seg_polygons_rasterise_back_onto_the_masks(labelled):
    yaml_path = export_yolo_seg(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out)

    config = yaml.safe_load(yaml_path.read_text())
    assert config["names"] == {0: "crack", 1: "rust"}
    assert (config["train"], config["val"]) == ("images/train", "images/val")
    assert (labelled.out / "labels" / "val" / "empty.txt").read_text() == ""
    assert (labelled.out / "images" / "val" / "empty.png").is_file()

    lines = (labelled.out / "labels" / "train" / "scene.txt").read_text().splitlines()
    assert len(lines) == 4, "one row per object: the two blobs are one row, parts joined (as Ultralytics)"
    drawn = {0: np.zeros((H, W), bool), 1: np.zeros((H, W), bool)}
    for line in lines:
        class_index, *coords = line.split()
        points = np.array(coords, dtype=float).reshape(-1, 2)
        assert points.min() >= 0 and points.max() <= 1
        polygon = (points * [W, H]).ravel().tolist()
        drawn[int(class_index)] |= rle_to_mask(polygons_to_rle([polygon], H, W))
    assert np.array_equal(drawn[0], rectangle() | l_shape()), "exact outlines rasterise to exactly the masks"
    assert np.array_equal(drawn[1], disk() | two_blobs())


def test_folder_formats_refuse_a_folder_with_old_files(labelled):
    labelled.out.mkdir()
    (labelled.out / "stale.txt").write_text("from an earlier export")
    with pytest.raises(ExportError, match="not empty"):
        export_yolo_seg(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out)
    with pytest.raises(ExportError, match="not empty"):
        export_png_masks(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out)


@pytest.mark.parametrize("shape", [rectangle, disk, l_shape, two_blobs])
def test_traced_polygons_match_each_shape(shape):
    mask = shape()
    exact = [p.ravel().tolist() for p in mask_to_polygons(mask, tolerance=0)]
    simplified = mask_to_polygons(mask, tolerance=1.0)
    assert np.array_equal(rle_to_mask(polygons_to_rle(exact, H, W)), mask), "unsimplified contour is pixel-exact"
    assert iou(rle_to_mask(polygons_to_rle([p.ravel().tolist() for p in simplified], H, W)), mask) > 0.9
    assert sum(len(p) for p in simplified) < sum(len(p) for p in exact) or shape is rectangle


def test_tracer_handles_single_pixels_and_diagonal_touches():
    assert trace_outer_boundary(np.array([[True]])).tolist() == [[0, 0], [1, 0], [1, 1], [0, 1]]
    diagonal = np.array([[1, 0], [0, 1]], dtype=bool)
    (polygon,) = mask_to_polygons(diagonal, tolerance=0)
    assert np.array_equal(rle_to_mask(polygons_to_rle([polygon.ravel().tolist()], 2, 2)), diagonal)


def test_png_masks_are_voc_palette_pngs_with_a_labelmap(labelled):
    small = np.zeros((H, W), dtype=bool)
    small[38:43, 53:58] = True  # on top of the disk
    small_id = add_version(labelled.engine, labelled.image_id, labelled.concepts["crack"], small)
    crowd = np.zeros((H, W), dtype=bool)
    crowd[0:4, 0:8] = True
    crowd_id = add_version(labelled.engine, labelled.image_id, labelled.concepts["rust"], crowd)
    with write_session(labelled.engine) as session:
        session.get(Annotation, crowd_id).iscrowd = True

    labelmap_path = export_png_masks(labelled.engine, labelled.media_dir, labelled.project_id, labelled.out)

    assert labelmap_path.read_text().splitlines() == [
        "# label:color_rgb:parts:actions", "background:0,0,0::", "crack:230,25,75::", "rust:230,25,75::"]  # the fixture gives both the default colour
    with PILImage.open(labelled.out / "SegmentationClass" / "scene.png") as image:
        assert image.mode == "P" and image.getpalette()[3:6] == [230, 25, 75]
        classes = np.asarray(image)
    objects = read_png(labelled.out / "SegmentationObject" / "scene.png")
    masks = {labelled.annotation_ids[name]: (concept, mask) for name, (concept, mask) in labelled.shapes.items()}
    masks[small_id] = ("crack", small)
    label = {"crack": 1, "rust": 2}
    for annotation_id, (concept, mask) in masks.items():
        visible = mask & ~small if annotation_id != small_id else mask
        assert (classes[visible] == label[concept]).all(), annotation_id
        assert len(np.unique(objects[visible])) == 1 and objects[visible][0] not in (0, 255)
    assert (objects[small] != objects[disk() & ~small][0]).all(), "the smaller instance stays on top"
    assert (classes[crowd] == 255).all() and (objects[crowd] == 255).all(), "crowds are 'ignore'"
    union = np.logical_or.reduce([mask for _, mask in masks.values()] + [crowd])
    assert (classes[~union] == 0).all() and (objects[~union] == 0).all()
    assert len(np.unique(objects[union & ~crowd])) == 5
    negative = read_png(labelled.out / "SegmentationClass" / "empty.png")
    assert negative.shape == (50, 50) and not negative.any()
    assert (labelled.out / "JPEGImages" / "scene.png").is_file()
    sets = labelled.out / "ImageSets" / "Segmentation"
    assert ((sets / "train.txt").read_text(), (sets / "val.txt").read_text()) == ("scene\n", "empty\n")
