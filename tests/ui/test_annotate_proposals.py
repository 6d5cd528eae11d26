"""Annotate-tab proposals with the tiny SAM3 on a real SQLite studio: Find all saves model
proposals and replaces only the unreviewed ones, the threshold hides without a model run,
the backbone runs once per image, clicks / boxes make one instance, model errors are messages."""
from __future__ import annotations

import numpy as np

from app.store import projects
from app.store.annotations import get_annotation
from app.ui import annotate_edits as edits
from app.ui import annotate_proposals as proposals
from app.ui.annotate_view import annotation_mask
from tests.ui.annotate_support import (  # noqa: F401
    NO_CHANGE, live, make_project, on_overlay, opened, studio, table_ids, table_rows, view,
)


def unescaped(markdown: str) -> str:
    return markdown.replace("\\", "")


def test_find_all_saves_proposals_and_a_second_run_replaces_only_unreviewed_ones(studio):
    project = make_project(studio)
    image_id = project.images[0]
    crack, pothole = project.concepts["crack"], project.concepts["pothole"]
    session = opened(studio, project)
    assert projects.get_image(studio.engine, image_id).status == "unlabelled"

    first = view(proposals.find_all(studio, session, 0.5, "base", crack))
    found = live(studio, image_id)
    assert found and all(a.source == "model" and a.concept_id == crack and 0.05 <= a.score <= 1 for a in found.values())
    assert projects.get_image(studio.engine, image_id).status == "proposed"
    best = max(found.values(), key=lambda a: a.score)
    assert first["session"]["selected"] == best.id and first["session"]["base_revision"] == 1
    assert "Find all **crack**" in first["message"] and f"#{best.id}" in first["message"]
    assert first["editor"]["value"]["layers"][0][..., 3].any()  # the best proposal is in the editor, ready to brush

    other = view(proposals.find_all(studio, first["session"], 0.5, "base", pothole))
    pothole_ids = {a.id for a in live(studio, image_id).values() if a.concept_id == pothole}
    assert pothole_ids

    second = view(proposals.find_all(studio, other["session"], 0.5, "base", crack))
    now = live(studio, image_id)
    assert not set(found) & set(now), "the unreviewed crack proposals were replaced"
    assert all(get_annotation(studio.engine, old).deleted for old in found)
    assert pothole_ids <= set(now), "another concept's proposals stay"
    assert "Replaced" in second["message"]

    accepted = view(edits.accept(studio, second["session"], 0.5, None))
    accepted_id = second["session"]["selected"]
    assert get_annotation(studio.engine, accepted_id).source == "human"
    view(proposals.find_all(studio, accepted["session"], 0.5, "base", crack))
    after = live(studio, image_id)
    assert accepted_id in after and after[accepted_id].source == "human" and after[accepted_id].revision == 2
    assert any(a.source == "model" and a.concept_id == crack for a in after.values())


def test_threshold_filters_without_a_model_run_and_backbone_runs_once_per_image(studio):
    project = make_project(studio)
    image_id = project.images[0]
    session = opened(studio, project)
    session = view(proposals.find_all(studio, session, 0.5, "base", project.concepts["crack"]))["session"]
    session = view(proposals.find_all(studio, session, 0.5, "base", project.concepts["pothole"]))["session"]
    cache = studio.models.cache
    assert (cache.misses, cache.hits) == (1, 1), "two prompts on one image: one backbone pass"

    session = view(edits.new_instance(studio, session, 0.5))["session"]  # nothing selected: filtering alone decides
    scores = sorted(a.score for a in live(studio, image_id).values())
    assert len(scores) >= 2 and scores[0] < scores[-1]
    middle = (scores[0] + scores[-1]) / 2
    everything = view(proposals.change_threshold(studio, session, 0.0))
    some = view(proposals.change_threshold(studio, session, middle))
    none = view(proposals.change_threshold(studio, session, 1.0))
    assert len(table_rows(everything["instances"])) == len(scores)
    shown = [float(row[3]) for row in table_rows(some["instances"])]
    assert shown and all(score >= middle - 0.005 for score in shown) and len(shown) < len(scores)
    assert table_rows(none["instances"]) == [] and "hidden" in none["image_info"]
    assert some["editor"] == NO_CHANGE, "moving the slider keeps the editor's edit"
    assert (cache.misses, cache.hits) == (1, 1), "the slider runs no model"


def click(studio, session, mode, x, y, threshold=0.5, model="base", concept=None):
    """A click on image pixel (x, y) of the overlay in `mode`."""
    return proposals.overlay_click(studio, session, threshold, mode, model, concept, *on_overlay(x, y))


def test_clicks_and_box_corners_add_then_refine_one_instance(studio):
    project = make_project(studio)
    image_id = project.images[0]
    crack = project.concepts["crack"]
    session = opened(studio, project)

    refused = view(click(studio, session, proposals.MODE_NEGATIVE, 10, 10, threshold=0.5, concept=crack))
    assert "+ click on the object first" in refused["message"] and live(studio, image_id) == {}

    session = view(proposals.clear_clicks(studio, refused["session"], 0.5))["session"]
    added = view(click(studio, session, proposals.MODE_POSITIVE, 24, 20, threshold=0.5, concept=crack))
    created = added["session"]["selected"]
    annotation = get_annotation(studio.engine, created)
    assert annotation.source == "model" and annotation.concept_id == crack and annotation.revision == 1
    assert "Added" in added["message"] and added["session"]["clicks"] == [[24.0, 20.0, 1]]

    refined = view(click(studio, added["session"], proposals.MODE_NEGATIVE, 2, 2, threshold=0.5, concept=crack))
    if "Refined" in refined["message"]:  # the tiny tracker's answer may be empty: then nothing fits
        assert get_annotation(studio.engine, created).revision == 2
    else:
        assert "No object fits" in refined["message"] and get_annotation(studio.engine, created).revision == 1

    revision = get_annotation(studio.engine, created).revision
    corner = view(click(studio, refined["session"], proposals.MODE_BOX, 5, 5, threshold=0.5, concept=crack))
    assert corner["session"]["corner"] == [5.0, 5.0] and "opposite corner" in corner["message"]
    boxed = view(click(studio, corner["session"], proposals.MODE_BOX, 40, 35, threshold=0.5, concept=crack))
    assert boxed["session"]["corner"] is None and "box (5, 5)–(41, 36)" in boxed["message"]
    assert boxed["session"]["box"] == [5.0, 5.0, 41.0, 36.0], "the box joins the clicks of the sequence"
    assert boxed["session"]["clicks"] == refined["session"]["clicks"]
    assert boxed["session"]["selected"] == created, "the box result replaces the selected instance"
    assert get_annotation(studio.engine, created).revision == revision + 1
    assert len(live(studio, image_id)) == 1

    fresh = view(edits.new_instance(studio, boxed["session"], 0.5))
    second = view(click(studio, fresh["session"], proposals.MODE_POSITIVE, 10, 30, threshold=0.5, concept=crack))
    assert second["session"]["selected"] not in (None, created) and len(live(studio, image_id)) == 2

    second_id = second["session"]["selected"]
    cleared = view(proposals.clear_clicks(studio, second["session"], 0.5))["session"]
    row, column = np.argwhere(annotation_mask(get_annotation(studio.engine, second_id)))[0]
    on_it = view(click(studio, cleared, proposals.MODE_POSITIVE, column, row, concept=crack))
    assert on_it["session"]["selected"] == second_id, "a sequence starting on the selected instance refines it"
    assert get_annotation(studio.engine, second_id).revision == 2 and len(live(studio, image_id)) == 2

    row, column = np.argwhere(annotation_mask(get_annotation(studio.engine, created)))[0]
    picked = view(click(studio, on_it["session"], proposals.MODE_SELECT, column, row, threshold=0.0, concept=crack))
    assert picked["session"]["selected"] in live(studio, image_id) and "Selected" in picked["message"]
    assert picked["session"]["selected"] in table_ids(picked["instances"])


def test_model_errors_are_messages_and_change_nothing(studio):
    project = make_project(studio)
    image_id = project.images[0]
    session = view(proposals.find_all(studio, opened(studio, project), 0.5, "base", project.concepts["crack"]))["session"]
    before = {a.id: a.revision for a in live(studio, image_id).values()}

    gone = view(proposals.find_all(studio, session, 0.5, "999", project.concepts["crack"]))
    assert "adapter #999 no longer exists" in unescaped(gone["message"]) and "Traceback" not in gone["message"]
    assert gone["editor"] == NO_CHANGE

    long_name = "very long crack description " * 2
    long_id = projects.add_concept(studio.engine, project.id, long_name).id
    too_long = view(proposals.find_all(studio, session, 0.5, "base", long_id))
    assert "longer than 32 tokens" in too_long["message"] and too_long["message"].startswith("**Not done:**")
    clicked = view(click(studio, session, proposals.MODE_POSITIVE, 5, 5, model="999", concept=long_id))
    assert "no longer exists" in clicked["message"]
    assert {a.id: a.revision for a in live(studio, image_id).values()} == before, "nothing saved was touched"
    assert too_long["session"]["selected"] == session["selected"]


def test_one_proposal_is_counted_in_the_singular():
    from types import SimpleNamespace

    one = [SimpleNamespace(id=7, score=0.9)]
    message = proposals._find_all_message("crack", "base", one, replaced=1, kept=1, threshold=0.5)
    assert "1 proposal," in message and "1 proposals" not in message
    assert "Replaced 1 earlier unreviewed proposal of" in message and "1 proposal changed by someone else" in message
    two = proposals._find_all_message("crack", "base", one * 2, replaced=2, kept=0, threshold=0.5)
    assert "2 proposals," in two and "Replaced 2 earlier unreviewed proposals of" in two
