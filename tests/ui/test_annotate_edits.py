"""Annotate-tab edits on a real SQLite studio: the brush layer <-> mask round trip (eraser
included), saves with revisions and conflicts, accept / reject / relabel, undo, navigation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.store import projects
from app.store.annotations import annotation_history, get_annotation, save_annotation
from app.store.masks import mask_to_rle
from app.ui import annotate_edits as edits
from app.ui import annotate_navigation as navigation
from app.ui import annotate_proposals as proposals
from app.ui.annotate_masks import (
    ALPHA_THRESHOLD, EDITOR_CANVAS, LAYER_ALPHA, editor_value, layer_to_mask, mask_to_layer, placement,
)
from app.ui.annotate_undo import undo
from app.ui.annotate_view import annotation_mask
from tests.ui.annotate_support import (  # noqa: F401
    IMAGE_SIZE, NO_CHANGE, assert_only_row_marked, live, make_project, opened, studio, table_ids, table_rows, view,
)

WIDTH, HEIGHT = IMAGE_SIZE


def square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def brushed(mask: np.ndarray | None, add: np.ndarray | None = None, erase: np.ndarray | None = None) -> dict:
    """The editor value after the browser painted `add` (brush alpha 153) and erased `erase` (alpha 0)
    on the canvas as the editor holds it (regions given in image pixels)."""
    value = editor_value(np.zeros((HEIGHT, WIDTH, 3), np.uint8), mask, "#e6194b")
    layer = value["layers"][0].copy()
    assert layer.shape == (EDITOR_CANVAS[1], EDITOR_CANVAS[0], 4) and value["background"].shape[:2] == layer.shape[:2]
    if add is not None:
        layer[on_canvas(add)] = (230, 25, 75, 153)
    if erase is not None:
        layer[on_canvas(erase)] = 0
    return {**value, "layers": [layer]}


def on_canvas(region: np.ndarray) -> np.ndarray:
    """An image-pixel region [H, W] -> the canvas pixels showing it [CH, CW]."""
    return mask_to_layer(region, region.shape, "#ffffff")[..., 3] > 0


def test_editor_layer_round_trip_with_brush_and_eraser():
    mask = square(5, 5, 10)
    layer = mask_to_layer(mask, (HEIGHT, WIDTH), "#3cb44b")
    place = placement((HEIGHT, WIDTH))
    assert layer.shape == (EDITOR_CANVAS[1], EDITOR_CANVAS[0], 4) and layer.dtype == np.uint8
    assert (place.width, place.height) == (720, 600), "48x40 fitted into 800x600: 15 canvas px per image px"
    painted = layer[..., 3] > 0
    assert (layer[painted] == (60, 180, 75, LAYER_ALPHA)).all() and painted.sum() == mask.sum() * 15 * 15
    assert np.array_equal(layer_to_mask({"layers": [layer]}, (HEIGHT, WIDTH)), mask)

    edited = layer_to_mask(brushed(mask, add=square(20, 20, 6), erase=square(5, 5, 3)), (HEIGHT, WIDTH), sent=mask)
    assert np.array_equal(edited, (mask | square(20, 20, 6)) & ~square(5, 5, 3))

    at_threshold = layer.copy()
    at_threshold[painted, 3] = ALPHA_THRESHOLD  # anti-aliased stroke edges: exactly 127 is not mask
    assert not layer_to_mask({"layers": [at_threshold]}, (HEIGHT, WIDTH)).any()
    # the browser may send a scaled canvas or a PIL image: nearest neighbour back to the canvas size
    halved = layer[::2, ::2]
    assert np.array_equal(layer_to_mask({"layers": [Image.fromarray(halved)]}, (HEIGHT, WIDTH)), mask)
    with pytest.raises(ValueError, match="no mask layer"):
        layer_to_mask({"layers": []}, (HEIGHT, WIDTH))


def test_brush_on_a_large_image_keeps_full_resolution_where_untouched():
    size = (900, 1200)  # shown at 800x600: each canvas pixel covers 1.5 image pixels
    fine = np.zeros(size, dtype=bool)
    fine[100:500, 100:700] = (np.indices((400, 600)).sum(axis=0) % 2).astype(bool)  # 1 px checkerboard
    layer = mask_to_layer(fine, size, "#e6194b")
    stroke = np.zeros(size, dtype=bool)
    stroke[600:750, 900:1100] = True
    layer[mask_to_layer(stroke, size, "#ffffff")[..., 3] > 0] = (230, 25, 75, 153)
    saved = layer_to_mask({"layers": [layer]}, size, sent=fine)
    assert np.array_equal(saved[:550], fine[:550]), "the untouched checkerboard keeps every pixel"
    assert saved[610:740, 910:1090].all() and saved.sum() > fine.sum()


def test_brush_save_creates_then_edits_and_a_stale_save_keeps_the_edit(studio):
    project = make_project(studio)
    image_id = project.images[0]
    crack = project.concepts["crack"]
    session = view(edits.new_instance(studio, opened(studio, project), 0.5))["session"]

    empty = view(edits.save_mask(studio, session, 0.5, brushed(square(0, 0, 1), erase=square(0, 0, 1)), crack))
    assert "mask is empty" in empty["message"] and live(studio, image_id) == {}

    created = view(edits.save_mask(studio, session, 0.5, brushed(square(5, 5, 10)), crack))
    annotation_id = created["session"]["selected"]
    saved = get_annotation(studio.engine, annotation_id)
    assert (saved.source, saved.revision, saved.concept_id) == ("human", 1, crack)
    assert np.array_equal(annotation_mask(saved), square(5, 5, 10))
    assert projects.get_image(studio.engine, image_id).status == "reviewed"
    assert created["editor"] == NO_CHANGE and "Created" in created["message"]

    # someone else saves revision 2 while this user brushes on revision 1
    theirs = save_annotation(studio.engine, image_id=image_id, concept_id=crack, rle=mask_to_rle(square(0, 0, 4)),
                             annotation_id=annotation_id, base_revision=1, author="colleague")
    mine = brushed(square(5, 5, 10), add=square(20, 20, 6))
    conflict = view(edits.save_mask(studio, created["session"], 0.5, mine, crack))
    assert (f"someone else saved revision 2 of annotation {annotation_id}; Save again to overwrite with your edit, "
            "or Reload to take theirs") in conflict["message"]
    assert conflict["editor"] == NO_CHANGE, "the user's edit stays in the editor"
    assert np.array_equal(annotation_mask(get_annotation(studio.engine, annotation_id)), square(0, 0, 4))
    assert [h.outcome for h in annotation_history(studio.engine, annotation_id)] == ["saved", "saved", "conflict"]
    assert conflict["session"]["base_revision"] == theirs.revision

    again = view(edits.save_mask(studio, conflict["session"], 0.5, mine, crack))
    overwritten = get_annotation(studio.engine, annotation_id)
    assert overwritten.revision == 3 and np.array_equal(annotation_mask(overwritten), layer_to_mask(mine, (HEIGHT, WIDTH)))
    assert again["session"]["base_revision"] == 3

    save_annotation(studio.engine, image_id=image_id, concept_id=crack, rle=mask_to_rle(square(30, 30, 5)),
                    annotation_id=annotation_id, base_revision=3)
    reloaded = view(edits.reload(studio, again["session"], 0.5))
    assert reloaded["session"]["base_revision"] == 4
    assert np.array_equal(layer_to_mask(reloaded["editor"]["value"], (HEIGHT, WIDTH)), square(30, 30, 5))


def test_accept_reject_relabel_and_delete(studio):
    project = make_project(studio)
    image_id = project.images[0]
    crack, pothole = project.concepts["crack"], project.concepts["pothole"]
    session = view(proposals.find_all(studio, opened(studio, project), 0.0, "base", crack))["session"]
    session = view(proposals.find_all(studio, session, 0.0, "base", pothole))["session"]
    proposal_id = session["selected"]
    score = get_annotation(studio.engine, proposal_id).score

    refused = view(edits.relabel(studio, session, 0.0, None, pothole))
    assert "already is 'pothole'" in refused["message"].replace("\\", "")
    relabelled = view(edits.relabel(studio, session, 0.0, None, crack))
    after = get_annotation(studio.engine, proposal_id)
    assert (after.concept_id, after.source, after.revision, after.score) == (crack, "human", 2, score)
    assert "is now **crack**" in relabelled["message"]

    already = view(edits.accept(studio, relabelled["session"], 0.0, None))
    assert "already reviewed" in already["message"]
    others = [a for a in live(studio, image_id).values() if a.source == "model"]
    assert others, "the other Find all's proposal is still unreviewed"
    selected = view(edits.select_row(studio, already["session"], 0.0, [f"▶ {others[0].id}", "crack", "proposal", "", 1]))
    assert selected["session"]["selected"] == others[0].id and selected["editor"]["value"]["layers"][0][..., 3].any()
    assert_only_row_marked(selected["instances"], others[0].id)
    edited = brushed(annotation_mask(others[0]), erase=square(0, 0, 8))
    accepted = view(edits.accept(studio, selected["session"], 0.0, edited))
    kept = get_annotation(studio.engine, others[0].id)
    assert kept.source == "human" and "with your brush edit" in accepted["message"]
    assert np.array_equal(annotation_mask(kept), layer_to_mask(edited, (HEIGHT, WIDTH)))

    rejected = view(edits.reject(studio, accepted["session"], 0.0))
    assert get_annotation(studio.engine, kept.id).deleted and kept.id not in table_ids(rejected["instances"])
    deleted = view(edits.delete(studio, view(edits.select_instance(studio, rejected["session"], 0.0, proposal_id))["session"], 0.0))
    assert get_annotation(studio.engine, proposal_id).deleted and f"Deleted #{proposal_id}" in deleted["message"]
    nothing = view(edits.delete(studio, deleted["session"], 0.0))
    assert "select an instance first" in nothing["message"]


def test_undo_of_create_edit_delete_and_find_all(studio):
    project = make_project(studio)
    image_id = project.images[0]
    crack = project.concepts["crack"]
    session = view(edits.new_instance(studio, opened(studio, project), 0.5))["session"]
    assert "nothing to undo" in view(undo(studio, session, 0.5))["message"]

    session = view(edits.save_mask(studio, session, 0.5, brushed(square(5, 5, 10)), crack))["session"]
    created = session["selected"]
    session = view(edits.save_mask(studio, session, 0.5, brushed(square(20, 20, 8)), crack))["session"]
    assert get_annotation(studio.engine, created).revision == 2

    undone_edit = view(undo(studio, session, 0.5))
    restored = get_annotation(studio.engine, created)
    assert restored.revision == 3 and np.array_equal(annotation_mask(restored), square(5, 5, 10))
    assert "Undid **Save mask of" in undone_edit["message"] and undone_edit["session"]["base_revision"] == 3

    session = view(edits.delete(studio, undone_edit["session"], 0.5))["session"]
    assert get_annotation(studio.engine, created).deleted
    undone_delete = view(undo(studio, session, 0.5))
    assert not get_annotation(studio.engine, created).deleted and undone_delete["session"]["selected"] == created

    undone_create = view(undo(studio, undone_delete["session"], 0.5))
    assert get_annotation(studio.engine, created).deleted and undone_create["session"]["undo"] == []
    assert len(annotation_history(studio.engine, created)) == 6, "every step is a revision in the history"

    first = view(proposals.find_all(studio, undone_create["session"], 0.5, "base", crack))["session"]
    first_ids = set(live(studio, image_id))
    second = view(proposals.find_all(studio, first, 0.5, "base", crack))["session"]
    assert not first_ids & set(live(studio, image_id))
    view(undo(studio, second, 0.5))
    assert set(live(studio, image_id)) == first_ids, "undoing the second Find all brings the first proposals back"


def test_undo_conflict_keeps_the_entry(studio):
    project = make_project(studio)
    crack = project.concepts["crack"]
    session = view(edits.new_instance(studio, opened(studio, project), 0.5))["session"]
    session = view(edits.save_mask(studio, session, 0.5, brushed(square(5, 5, 10)), crack))["session"]
    save_annotation(studio.engine, image_id=project.images[0], concept_id=crack, rle=mask_to_rle(square(1, 1, 3)),
                    annotation_id=session["selected"], base_revision=1, author="colleague")
    refused = view(undo(studio, session, 0.5))
    assert "someone else saved revision 2" in refused["message"] and len(refused["session"]["undo"]) == 1
    assert not get_annotation(studio.engine, session["selected"]).deleted


def test_image_list_status_filter_and_previous_next(studio):
    project = make_project(studio, images=3)
    first, second, third = project.images
    opening = view(navigation.open_project(studio, {}, 0.5, project.id))
    assert opening["session"]["image_id"] == first
    assert [value for _, value in opening["image_list"]["choices"]] == project.images
    assert all(label.endswith("· unlabelled") for label, _ in opening["image_list"]["choices"])
    assert "image 1 of 3" in opening["image_info"]

    found = view(proposals.find_all(studio, opening["session"], 0.5, "base", project.concepts["crack"]))
    assert dict((v, k) for k, v in found["image_list"]["choices"])[first].endswith("· proposed")

    filtered = view(navigation.set_status_filter(studio, found["session"], 0.5, "unlabelled"))
    assert filtered["session"]["image_id"] == second, "the open image left the filter: its first image opens"
    assert view(navigation.step_image(studio, filtered["session"], 0.5, step=-1))["message"].startswith("This is the first")
    at_third = view(navigation.step_image(studio, filtered["session"], 0.5, step=1))
    assert at_third["session"]["image_id"] == third and at_third["session"]["selected"] is None
    assert "last image" in view(navigation.step_image(studio, at_third["session"], 0.5, step=1))["message"]

    everything = view(navigation.set_status_filter(studio, at_third["session"], 0.5, "all"))
    picked = view(navigation.open_image(studio, everything["session"], 0.5, first))
    assert picked["session"]["image_id"] == first and len(table_rows(picked["instances"])) >= 0
    assert view(navigation.step_image(studio, picked["session"], 0.5, step=1))["session"]["image_id"] == second

    concept = navigation.concept_choices(studio, project.id)
    assert concept["value"] == project.concepts["crack"], "the project's first concept by default"
    _, label = navigation.pick_concept(studio, picked["session"], project.concepts["pothole"])
    assert label["value"] == "Find all pothole"
    models = navigation.model_choices(studio, project.id, keep="42")
    assert models["choices"] == [("Base SAM3", "base")] and models["value"] == "base"
    empty = view(navigation.open_project(studio, picked["session"], 0.5, None))
    assert empty["session"]["image_id"] is None and table_rows(empty["instances"]) == []


def test_the_open_image_and_threshold_come_back_after_a_reload(studio):
    from app.ui import annotate_memory as memory
    from app.ui import annotate_navigation as navigation

    project = make_project(studio, images=3)
    session = opened(studio, project)
    session = view(navigation.step_image(studio, session, 0.3, step=1))["session"]
    session = view(navigation.step_image(studio, session, 0.3, step=1))["session"]
    kept = memory.remember({}, session, 0.3)
    assert kept == {str(project.id): {"image_id": project.images[2], "threshold": 0.3}}

    fresh = opened(studio, project)  # a reload: the project opens on its first image, threshold 0.5
    *outputs, threshold = memory.restore(studio, fresh, 0.5, kept)
    assert view(tuple(outputs))["session"]["image_id"] == project.images[2] and threshold == 0.3
    nothing = memory.restore(studio, fresh, 0.5, {str(project.id): {"image_id": 99999, "threshold": 0.3}})
    assert all(update == NO_CHANGE for update in nothing), "a deleted image is not restored"


def test_a_restore_never_puts_back_an_older_threshold_than_the_page_shows(studio):
    """The restore runs a round trip after the tab opens; a threshold typed meanwhile is newer."""
    from app.ui import annotate_memory as memory

    project = make_project(studio, images=3)
    fresh = opened(studio, project)
    kept = {str(project.id): {"image_id": project.images[2], "threshold": 0.3}}

    *outputs, threshold = memory.restore(studio, fresh, 0.0, kept)  # the user typed 0 before it ran
    assert threshold == NO_CHANGE
    assert view(tuple(outputs))["session"]["image_id"] == project.images[2], "the remembered image still opens"
    same = {str(project.id): {"image_id": project.images[2], "threshold": 0.5}}
    *_, threshold = memory.restore(studio, fresh, 0.5, same)  # read before the user typed: nothing to send
    assert threshold == NO_CHANGE
    *_, threshold = memory.restore(studio, fresh, 0.5, kept)  # a reload shows the default: memory applies
    assert threshold == 0.3


def test_a_restore_queued_behind_the_users_first_move_does_not_undo_it(studio):
    """Entering the tab chains a restore after the refresh; on a loaded machine the user's click on
    "least certain first" ran before it, and the restore put the remembered image back."""
    from app.ui import annotate_memory as memory
    from app.ui import annotate_navigation as navigation

    project = make_project(studio, images=3)
    entered = view(navigation.refresh_tab(studio, opened(studio, project), 0.5, project.id))["session"]
    kept = {str(project.id): {"image_id": project.images[2], "threshold": 0.5}}
    moved = view(navigation.step_image(studio, entered, 0.5, step=1))["session"]
    assert moved["image_id"] == project.images[1]
    assert all(update == NO_CHANGE for update in memory.restore(studio, moved, 0.5, kept)), "the user's move stands"
    *outputs, _ = memory.restore(studio, entered, 0.5, kept)  # nothing ran between: the memory applies
    assert view(tuple(outputs))["session"]["image_id"] == project.images[2]


def test_the_project_already_open_is_not_reopened_by_a_repeated_change(studio):
    """Gradio sent the project dropdown's change again and again on a loaded machine; each reopening
    dropped the selection Find all had made, and the brush then painted a new, empty instance."""
    project = make_project(studio, images=2)
    session = opened(studio, project)
    found = view(proposals.find_all(studio, session, 0.0, "base", project.concepts["crack"]))
    assert found["session"]["selected"] is not None
    again = navigation.open_project(studio, found["session"], 0.0, project.id)
    assert all(update == NO_CHANGE for update in again)
    other = projects.create_project(studio.engine, "Other")
    switched = view(navigation.open_project(studio, found["session"], 0.0, other.id))
    assert switched["session"]["project_id"] == other.id and switched["session"]["selected"] is None
