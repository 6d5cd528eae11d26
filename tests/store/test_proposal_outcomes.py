"""Review outcomes of proposals per proposing model and concept (app/store/proposal_outcomes.py)."""
from __future__ import annotations

from app.jobs.lifecycle import insert_job, request_cancel
from app.store.annotations import delete_annotation, list_annotations, save_annotation
from app.store.projects import add_concept, create_project
from app.store.proposal_outcomes import accepted_share, proposal_outcomes
from app.store.proposals import Proposal, write_image_proposals
from tests.store.conftest import add_image, box_rle


def test_accepted_edited_rejected_and_replaced_proposals_are_told_apart(engine):
    project = create_project(engine, "o")
    crack, rust = (add_concept(engine, project.id, name) for name in ("crack", "rust"))
    first = insert_job(engine, project.id, "prelabel", "{}", "[]")
    image, waiting = add_image(engine, project.id), add_image(engine, project.id)
    boxes = [box_rle(30, 40, 1, 1, 5, 5), box_rle(30, 40, 10, 10, 5, 5), box_rle(30, 40, 20, 20, 5, 5),
             box_rle(30, 40, 1, 20, 5, 5)]
    write_image_proposals(engine, first.id, image.id, [crack.id, rust.id],
                          [Proposal(crack.id, boxes[0], 0.9)], "base")  # replaced below, never judged
    request_cancel(engine, first.id)
    second = insert_job(engine, project.id, "prelabel", "{}", "[]")
    write_image_proposals(engine, second.id, image.id, [crack.id, rust.id],
                          [Proposal(crack.id, b, 0.8) for b in boxes], "adapter:3")
    write_image_proposals(engine, second.id, waiting.id, [crack.id], [Proposal(crack.id, boxes[0], 0.8)], "adapter:3")
    accepted, edited, relabelled, rejected = list_annotations(engine, image.id)
    save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=boxes[0], annotation_id=accepted.id,
                    base_revision=1, source="human", score=accepted.score)  # Accept unchanged
    save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 10, 10, 7, 7),
                    annotation_id=edited.id, base_revision=1, source="human")
    save_annotation(engine, image_id=image.id, concept_id=rust.id, rle=boxes[2], annotation_id=relabelled.id,
                    base_revision=1, source="human")
    delete_annotation(engine, rejected.id, 1)
    outcomes = proposal_outcomes(engine, project.id)
    assert outcomes == {"adapter:3": {"crack": {"accepted": 1, "edited": 2, "rejected": 1, "open": 0}}}
    assert accepted_share(outcomes["adapter:3"]["crack"]) == 0.25
    assert accepted_share({"open": 3}) is None
