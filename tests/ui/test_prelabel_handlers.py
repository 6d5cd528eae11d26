"""The Train tab's Pre-label section and Annotate's "least certain first" walk, called as the
browser would on a real store (jobs sent with a recording `send`, no worker; the worker's
writes are played with app.store.proposals, the function it uses)."""
from __future__ import annotations

import json

from app.jobs.lifecycle import claim_job, get_job, record_adapter
from app.store.projects import get_project
from app.store.proposals import Proposal, write_image_proposals
from app.store.review_queue import LEAST_CERTAIN
from app.ui import annotate_navigation as navigation
from app.ui import prelabel_handlers as prelabel
from app.ui.messages import REFUSED
from app.ui.train_handlers import VIEW_OUTPUTS
from tests.store.conftest import box_rle
from tests.ui.annotate_support import make_project, opened, studio, view  # noqa: F401 (fixture)

VIEW = {name: index + 1 for index, name in enumerate(VIEW_OUTPUTS)}  # after the message


def test_start_prelabel_queues_a_job_for_the_unreviewed_images_and_shows_its_progress(studio):
    project = make_project(studio, images=3)
    adapter = record_adapter(studio.engine, project.id, None, "round 1", "adapters/x")
    model, concepts, after, counts = prelabel.prelabel_form(studio, project.id)
    assert model["value"] == str(adapter.id) and after["value"] == "ask" and "3 unlabelled" in counts
    sent = []
    outputs = prelabel.start_prelabel(studio, project.id, str(adapter.id), "all", [project.concepts["crack"]], True,
                                      0.2, None, [], send=sent.append)
    job = get_job(studio.engine, sent[0])
    assert (job.kind, json.loads(job.dataset_snapshot)) == ("prelabel", project.images)
    config = json.loads(job.config_json)
    assert (config["adapter_id"], config["concept_ids"], config["threshold"]) == (adapter.id, [project.concepts["crack"]], 0.2)
    assert f"Pre-label job {job.id} queued for 3 image(s)" in outputs[0]
    assert "Pre-label job" in outputs[VIEW["progress"]]
    again = prelabel.start_prelabel(studio, project.id, "base", "all", [], True, None, None, [], send=sent.append)
    assert again[0].startswith(REFUSED) and "already has job" in again[0]
    assert prelabel.start_prelabel(studio, project.id, "base", "val", [], True, None, None, [], send=sent.append)[0].startswith(REFUSED)


def test_after_finetune_setting_is_stored_per_project(studio):
    project = make_project(studio)
    assert "automatically" in prelabel.set_after_finetune(studio, project.id, "auto")
    assert get_project(studio.engine, project.id).prelabel_after_finetune == "auto"
    assert prelabel.set_after_finetune(studio, project.id, "sometimes").startswith(REFUSED)


def test_least_certain_first_walks_the_review_queue(studio):
    project = make_project(studio, images=3)
    crack = project.concepts["crack"]
    sent = []
    prelabel.start_prelabel(studio, project.id, "base", "all", [], True, None, None, [], send=sent.append)
    session = opened(studio, project)
    empty = view(navigation.set_status_filter(studio, session, 0.5, LEAST_CERTAIN))
    assert "No image awaits review" in empty["message"]
    claim_job(studio.engine, sent[0], "test")
    for image_id, score in zip(project.images, (0.97, 0.52, 0.7)):
        write_image_proposals(studio.engine, sent[0], image_id, [crack],
                              [Proposal(crack, box_rle(40, 48, 2, 2, 9, 9), score)], "base", {crack: 0.9})
    session = view(navigation.set_status_filter(studio, session, 0.5, LEAST_CERTAIN))["session"]
    assert session["image_id"] == project.images[1]  # 0.52: nearest the threshold
    assert session["selected"] is not None  # its proposal is selected: a / r act on it at once
    session = view(navigation.step_image(studio, session, 0.5, 1))["session"]
    assert session["image_id"] == project.images[2]
    session = view(navigation.step_image(studio, session, 0.5, 1))["session"]
    assert session["image_id"] == project.images[0]
    assert "last image" in view(navigation.step_image(studio, session, 0.5, 1))["message"]


def test_models_tab_shows_review_outcomes_per_model(studio):
    from app.store.annotations import delete_annotation, list_annotations, save_annotation
    from app.ui.review_outcomes import outcomes_markdown

    project = make_project(studio, images=1)
    crack = project.concepts["crack"]
    assert "No proposal has been reviewed yet" in outcomes_markdown(studio, project.id)
    sent = []
    prelabel.start_prelabel(studio, project.id, "base", "all", [], True, None, None, [], send=sent.append)
    claim_job(studio.engine, sent[0], "test")
    boxes = [box_rle(40, 48, 2, 2, 9, 9), box_rle(40, 48, 20, 20, 9, 9)]
    write_image_proposals(studio.engine, sent[0], project.images[0], [crack],
                          [Proposal(crack, box, 0.8) for box in boxes], "base")
    kept, dropped = list_annotations(studio.engine, project.images[0])
    save_annotation(studio.engine, image_id=project.images[0], concept_id=crack, rle=boxes[0], annotation_id=kept.id,
                    base_revision=1, source="human")
    delete_annotation(studio.engine, dropped.id, 1)
    assert "| base SAM3 | crack | 1 | 0 | 1 | 50% |" in outcomes_markdown(studio, project.id)
