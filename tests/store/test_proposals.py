"""write_image_proposals: an image's proposals and its pre-label mark are one unit (issue 17)."""
from __future__ import annotations

from sqlmodel import select

from app.jobs.lifecycle import insert_job
from app.store.annotations import list_annotations, save_annotation
from app.store.db import read_session
from app.store.models import PrelabelMark
from app.store.projects import add_concept, create_project, get_image
from app.store.proposals import Proposal, done_image_ids, write_image_proposals
from tests.store.conftest import add_image, box_rle


def _setup(engine):
    project = create_project(engine, "p")
    concept = add_concept(engine, project.id, "crack")
    job = insert_job(engine, project.id, "prelabel", "{}", "[]")
    return project, concept, job


def test_proposals_replace_only_unreviewed_model_rows_and_a_second_write_is_refused(engine):
    project, concept, job = _setup(engine)
    image = add_image(engine, project.id)
    old = save_annotation(engine, image_id=image.id, concept_id=concept.id, rle=box_rle(30, 40, 0, 0, 5, 5),
                          source="model", score=0.8)
    new = [Proposal(concept.id, box_rle(30, 40, 10, 10, 4, 6), 0.6), Proposal(concept.id, box_rle(30, 40, 1, 20, 3, 3), 0.4)]
    mark = write_image_proposals(engine, job.id, image.id, [concept.id], new, "adapter:7", presence={concept.id: 0.55})
    assert (mark.proposals, mark.skipped) == (2, False)
    live = list_annotations(engine, image.id)
    assert [(a.score, a.proposed_by, a.source) for a in live] == [(0.6, "adapter:7", "model"), (0.4, "adapter:7", "model")]
    assert old.id not in {a.id for a in live}
    assert write_image_proposals(engine, job.id, image.id, [concept.id], new, "adapter:7") is None  # done once
    assert len(list_annotations(engine, image.id)) == 2
    assert done_image_ids(engine, job.id) == {image.id}
    assert get_image(engine, image.id).status == "proposed"


def test_a_reviewed_image_gets_only_a_skipped_mark(engine):
    project, concept, job = _setup(engine)
    image = add_image(engine, project.id)
    human = save_annotation(engine, image_id=image.id, concept_id=concept.id, rle=box_rle(30, 40, 0, 0, 5, 5))
    mark = write_image_proposals(engine, job.id, image.id, [concept.id],
                                 [Proposal(concept.id, box_rle(30, 40, 10, 10, 4, 6), 0.9)], "base")
    assert (mark.proposals, mark.skipped) == (0, True)
    assert [(a.id, a.revision) for a in list_annotations(engine, image.id)] == [(human.id, human.revision)]
    with read_session(engine) as session:
        assert len(list(session.exec(select(PrelabelMark)))) == 1
