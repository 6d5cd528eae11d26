"""The review queue orders proposed images by the model's uncertainty (app/store/review_queue.py)."""
from __future__ import annotations

import pytest

from app.jobs.lifecycle import insert_job, request_cancel
from app.store.annotations import save_annotation
from app.store.projects import add_concept, create_project
from app.store.proposals import Proposal, write_image_proposals
from app.store.review_queue import image_uncertainty, least_certain_proposal, queue_neighbour, review_queue
from tests.store.conftest import add_image, box_rle


def insert_job_after(engine, project_id: int, job_id: int) -> int:
    request_cancel(engine, job_id)
    return insert_job(engine, project_id, "prelabel", "{}", "[]").id


def test_uncertainty_formula():
    assert image_uncertainty([0.5], [], 0.5) == 1.0
    assert image_uncertainty([0.0], [], 0.5) == pytest.approx(0.0)
    assert image_uncertainty([0.9], [], 0.5) == pytest.approx(0.2)
    assert image_uncertainty([0.95], [0.5], 0.5) == 1.0  # presence at a coin toss
    assert image_uncertainty([], [0.9], 0.5) == pytest.approx(0.2)
    assert image_uncertainty([], [], 0.5) == 0.0
    assert image_uncertainty([0.3], [], 0.3) == 1.0 and image_uncertainty([1.0], [], 0.3) == pytest.approx(0.0)
    assert image_uncertainty([0.0], [], 0.0) == pytest.approx(0.99, abs=0.01)  # the slider at 0: t = 0.01
    with pytest.raises(ValueError, match="threshold"):
        image_uncertainty([0.5], [], 1.5)


def test_queue_puts_the_least_certain_first_and_drops_reviewed_images(engine):
    project = create_project(engine, "q")
    concept = add_concept(engine, project.id, "crack")
    job = insert_job(engine, project.id, "prelabel", "{}", "[]")
    sure, unsure, coin_toss, reviewed = (add_image(engine, project.id) for _ in range(4))
    for image, score in ((sure, 0.98), (unsure, 0.55), (reviewed, 0.5)):
        write_image_proposals(engine, job.id, image.id, [concept.id],
                              [Proposal(concept.id, box_rle(30, 40, 1, 1, 5, 5), score)], "base", {concept.id: 0.99})
    write_image_proposals(engine, job.id, coin_toss.id, [concept.id],
                          [Proposal(concept.id, box_rle(30, 40, 1, 1, 5, 5), 0.95)], "base", {concept.id: 0.5})
    save_annotation(engine, image_id=reviewed.id, concept_id=concept.id, rle=box_rle(30, 40, 9, 9, 3, 3))
    queue = review_queue(engine, project.id, 0.5)
    assert [image_id for image_id, _ in queue] == [coin_toss.id, unsure.id, sure.id]
    assert queue[0][1] == 1.0 and queue[1][1] == pytest.approx(0.9)
    assert queue_neighbour(engine, project.id, None, 1, 0.5) == coin_toss.id
    assert queue_neighbour(engine, project.id, coin_toss.id, 1, 0.5) == unsure.id
    assert queue_neighbour(engine, project.id, sure.id, 1, 0.5) is None
    assert queue_neighbour(engine, project.id, unsure.id, -1, 0.5) == coin_toss.id
    assert queue_neighbour(engine, project.id, reviewed.id, 1, 0.5) == coin_toss.id  # left the queue: its head
    write_image_proposals(engine, job.id, reviewed.id, [concept.id], [], "base")  # nothing: reviewed
    second = write_image_proposals(engine, insert_job_after(engine, project.id, job.id), sure.id, [concept.id],
                                   [Proposal(concept.id, box_rle(30, 40, 1, 1, 5, 5), s) for s in (0.9, 0.45, 0.1)],
                                   "base")
    assert second.proposals == 3
    assert least_certain_proposal(engine, sure.id, 0.5).score == 0.45


def test_pending_proposals_on_an_imported_image_put_it_in_the_proposed_filter_and_the_queue(engine):
    """Imported masks make an image "reviewed"; Find all's proposals on it still await a review."""
    from app.store.image_order import image_choices, neighbour_image_id
    from app.store.projects import count_images

    project = create_project(engine, "imported")
    concept = add_concept(engine, project.id, "crack")
    imported = add_image(engine, project.id)
    save_annotation(engine, image_id=imported.id, concept_id=concept.id, rle=box_rle(30, 40, 9, 9, 3, 3), source="import")
    assert [choice.status for choice in image_choices(engine, project.id)] == ["reviewed"]
    proposal = save_annotation(engine, image_id=imported.id, concept_id=concept.id, rle=box_rle(30, 40, 1, 1, 5, 5),
                               source="model", score=0.6, author="find all")
    assert [choice.image_id for choice in image_choices(engine, project.id, "proposed")] == [imported.id]
    assert count_images(engine, project.id, "proposed") == 1 and count_images(engine, project.id, "reviewed") == 0
    assert neighbour_image_id(engine, project.id, None, 1, "proposed") == imported.id
    assert [image_id for image_id, _ in review_queue(engine, project.id, 0.5)] == [imported.id]
    save_annotation(engine, image_id=imported.id, concept_id=concept.id, rle=box_rle(30, 40, 1, 1, 5, 5),
                    annotation_id=proposal.id, base_revision=proposal.revision, source="human")  # accepted
    assert image_choices(engine, project.id, "proposed") == [] and review_queue(engine, project.id, 0.5) == []
    assert count_images(engine, project.id, "reviewed") == 1
