"""Annotation saves: revisions, conflicts that keep the refused work, history,
soft delete, bbox/area from the RLE, and refusals of bad masks."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from app.store.annotations import (
    RevisionConflict, annotation_history, check_mask, decode_rle_counts, delete_annotation, get_annotation,
    list_annotations, save_annotation,
)
from app.store.projects import add_concept, create_project, get_image
from tests.store.conftest import add_image, box_rle


def column_major_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts: alternating run lengths of 0s and 1s down the columns, zeros first."""
    runs, value, length = [], 0, 0
    for pixel in mask.flatten(order="F"):
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    return runs


@pytest.fixture
def scene(engine):
    """A project with two concepts and one 40x30 image (width x height)."""
    project = create_project(engine, "roofs")
    crack = add_concept(engine, project.id, "crack")
    moss = add_concept(engine, project.id, "moss")
    image = add_image(engine, project.id, width=40, height=30)
    return engine, image, crack, moss


def test_new_annotation_is_revision_1_with_bbox_and_area_from_the_rle(scene):
    engine, image, crack, _ = scene
    saved = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 5, 7, 4, 9), author="ann")
    assert saved.revision == 1 and not saved.deleted
    assert json.loads(saved.bbox) == [7.0, 5.0, 9.0, 4.0]  # [x, y, w, h]
    assert saved.area == 36.0
    assert json.loads(saved.rle) == box_rle(30, 40, 5, 7, 4, 9)
    [history] = annotation_history(engine, saved.id)
    assert (history.revision, history.outcome, history.author, history.rle) == (1, "saved", "ann", saved.rle)


def test_uncompressed_counts_are_stored_compressed(scene):
    engine, image, crack, _ = scene
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[2:4, 3:8] = 1
    runs = column_major_runs(mask)
    saved = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle={"size": [30, 40], "counts": runs})
    assert json.loads(saved.rle) == box_rle(30, 40, 2, 3, 2, 5)
    assert saved.area == 10.0 and json.loads(saved.bbox) == [3.0, 2.0, 5.0, 2.0]


def test_edits_raise_the_revision_and_append_history(scene):
    engine, image, crack, moss = scene
    first = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 0, 0, 3, 3))
    second = save_annotation(engine, image_id=image.id, concept_id=moss.id, rle=box_rle(30, 40, 1, 1, 5, 5),
                             annotation_id=first.id, base_revision=1, author="bob")
    third = save_annotation(engine, image_id=image.id, concept_id=moss.id, rle=box_rle(30, 40, 2, 2, 6, 6),
                            annotation_id=first.id, base_revision=2)
    assert (second.id, second.revision, second.concept_id, second.area) == (first.id, 2, moss.id, 25.0)
    assert third.revision == 3 and get_annotation(engine, first.id).area == 36.0
    history = annotation_history(engine, first.id)
    assert [(row.revision, row.outcome, row.concept_id) for row in history] == [
        (1, "saved", crack.id), (2, "saved", moss.id), (3, "saved", moss.id)]
    assert history[1].author == "bob" and json.loads(history[1].rle) == box_rle(30, 40, 1, 1, 5, 5)


def test_stale_revision_is_refused_and_the_refused_work_is_kept(scene):
    engine, image, crack, _ = scene
    original = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 0, 0, 3, 3))
    save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 0, 0, 4, 4),
                    annotation_id=original.id, base_revision=1, author="alice")
    late_edit = box_rle(30, 40, 10, 10, 8, 8)
    with pytest.raises(RevisionConflict) as caught:
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=late_edit,
                        annotation_id=original.id, base_revision=1, author="bob")
    conflict = caught.value
    assert isinstance(conflict, ValueError)
    assert (conflict.annotation_id, conflict.base_revision, conflict.current_revision) == (original.id, 1, 2)
    assert f"annotation {original.id}" in str(conflict) and "revision 1" in str(conflict) and "revision 2" in str(conflict)
    unpickled = pickle.loads(pickle.dumps(conflict))
    assert (unpickled.annotation_id, unpickled.current_revision, str(unpickled)) == (original.id, 2, str(conflict))

    current = get_annotation(engine, original.id)
    assert current.revision == 2 and current.area == 16.0  # alice's save stands
    refused = annotation_history(engine, original.id)[-1]
    assert (refused.outcome, refused.revision, refused.author) == ("conflict", 1, "bob")
    assert json.loads(refused.rle) == late_edit and json.loads(refused.bbox) == [10.0, 10.0, 8.0, 8.0]


def test_soft_delete_hides_the_annotation_and_keeps_it_recoverable(scene):
    engine, image, crack, _ = scene
    kept = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 0, 0, 2, 2))
    doomed = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 5, 5, 2, 2))
    deleted = delete_annotation(engine, doomed.id, base_revision=1, author="carol")
    assert (deleted.deleted, deleted.revision) == (True, 2)
    assert [a.id for a in list_annotations(engine, image.id)] == [kept.id]
    assert [a.id for a in list_annotations(engine, image.id, include_deleted=True)] == [kept.id, doomed.id]
    last = annotation_history(engine, doomed.id)[-1]
    assert (last.outcome, last.revision, last.deleted, last.author) == ("saved", 2, True, "carol")

    with pytest.raises(ValueError, match="already deleted"):
        delete_annotation(engine, doomed.id, base_revision=2)
    with pytest.raises(RevisionConflict):
        delete_annotation(engine, kept.id, base_revision=7)
    assert not get_annotation(engine, kept.id).deleted
    assert annotation_history(engine, kept.id)[-1].outcome == "conflict"
    assert annotation_history(engine, kept.id)[-1].deleted  # it records a delete attempt

    restored = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 5, 5, 2, 2),
                               annotation_id=doomed.id, base_revision=2)
    assert (restored.deleted, restored.revision) == (False, 3)


def test_mask_of_another_size_is_refused_with_both_sizes(scene):
    engine, image, crack, _ = scene
    with pytest.raises(ValueError, match=rf"mask is 40x30 .* image {image.id} is 30x40"):
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(40, 30, 0, 0, 2, 2))
    assert list_annotations(engine, image.id, include_deleted=True) == []


@pytest.mark.parametrize("rle, reason", [
    ({"size": [30, 40], "counts": "not an rle!"}, "invalid character"),
    ({"size": [30, 40], "counts": "0"}, "cover 30x40 = 1200 pixels"),
    ({"size": [30, 40], "counts": [1200]}, "empty"),
    ({"size": [30, 40], "counts": [600, -10, 610]}, ">= 0"),
    ({"size": [30], "counts": "0"}, "height, width"),
    ({"counts": "0"}, "COCO RLE dict"),
    ("PQ0", "COCO RLE dict"),
])
def test_malformed_masks_are_refused(rle, reason):
    with pytest.raises(ValueError, match=reason):
        check_mask(rle)


def test_rle_decoder_agrees_with_pycocotools_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 50, size=2)
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        counts = coco_mask.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        assert decode_rle_counts(counts) == column_major_runs(mask)


def test_bad_references_and_arguments_are_refused(scene):
    engine, image, crack, _ = scene
    other_project = create_project(engine, "other")
    foreign = add_concept(engine, other_project.id, "crack")
    other_image = add_image(engine, other_project.id, width=40, height=30)
    rle = box_rle(30, 40, 0, 0, 2, 2)
    with pytest.raises(ValueError, match=f"concept {foreign.id} is not a concept of image {image.id}"):
        save_annotation(engine, image_id=image.id, concept_id=foreign.id, rle=rle)
    with pytest.raises(ValueError, match="image 999999 does not exist"):
        save_annotation(engine, image_id=999999, concept_id=crack.id, rle=rle)
    with pytest.raises(ValueError, match="annotation 999999 does not exist"):
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, annotation_id=999999, base_revision=1)
    saved = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle)
    with pytest.raises(ValueError, match=f"belongs to image {image.id}, not image {other_image.id}"):
        save_annotation(engine, image_id=other_image.id, concept_id=foreign.id, rle=rle, annotation_id=saved.id, base_revision=1)
    with pytest.raises(ValueError, match="needs base_revision"):
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, annotation_id=saved.id)
    with pytest.raises(ValueError, match="only for edits"):
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, base_revision=1)
    with pytest.raises(ValueError, match="source 'robot'"):
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, source="robot")
    with pytest.raises(ValueError, match="score"):
        save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, source="model", score=1.5)
    assert [a.id for a in list_annotations(engine, image.id)] == [saved.id]
    assert len(annotation_history(engine, saved.id)) == 1  # refused calls leave no trace


def test_saves_move_the_image_status(scene):
    engine, image, crack, _ = scene
    rle = box_rle(30, 40, 0, 0, 2, 2)
    proposal = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, source="model", score=0.9)
    assert get_image(engine, image.id).status == "proposed"
    assert proposal.score == 0.9 and proposal.source == "model"
    save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, annotation_id=proposal.id, base_revision=1)
    assert get_image(engine, image.id).status == "reviewed"
    save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, source="model", score=0.5)
    assert get_image(engine, image.id).status == "proposed"  # a new proposal awaits a review again
    save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=rle, source="import")
    assert get_image(engine, image.id).status == "proposed"  # an import never hides pending proposals
