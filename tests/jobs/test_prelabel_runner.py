"""worker/run_prelabel.py in this process on the tiny SAM3 (the worker path is in test_prelabel_job.py):
a resumed run proposes only unmarked images, an image reviewed after submit is skipped, cancel stops."""
from __future__ import annotations

import json

import pytest
from sqlmodel import select

from app.jobs.lifecycle import claim_job, get_job, request_cancel
from app.jobs.prelabel import submit_prelabel
from app.settings import Settings
from app.store.annotations import list_annotations, save_annotation
from app.store.db import read_session
from app.store.models import PrelabelMark
from app.store.projects import add_concept
from app.store.proposals import write_image_proposals
from app.store.uploads import ingest_files
from sam3_lora.synthetic import write_synthetic_coco
from tests.jobs.conftest import new_store
from tests.store.conftest import box_rle
from worker.run_prelabel import run_prelabel

NUM_IMAGES = 5


@pytest.fixture
def claimed(tmp_path, tiny_model_dir):
    """(engine, settings, job, image ids, concept id): a claimed pre-label job over NUM_IMAGES unlabelled images."""
    engine, project_id = new_store(tmp_path / "data")
    settings = Settings(DATA_DIR=tmp_path / "data")
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    concept = add_concept(engine, project_id, "circle")
    coco = write_synthetic_coco(tmp_path / "synthetic", num_images=NUM_IMAGES, image_size=112, seed=7)
    report = ingest_files(engine, settings.media_dir, project_id, sorted((coco.parent / "images").iterdir()),
                          max_bytes=10 << 20)
    image_ids = sorted(image_id for _, image_id in report.accepted)
    job = submit_prelabel(engine, project_id, lambda job_id: None, model_source=str(tiny_model_dir),
                          threshold=0.0, image_batch=2, device="cpu")
    assert claim_job(engine, job.id, "test")
    yield engine, settings, get_job(engine, job.id), image_ids, concept.id
    engine.dispose()


def _marks(engine, job_id) -> dict[int, PrelabelMark]:
    with read_session(engine) as session:
        return {m.image_id: m for m in session.exec(select(PrelabelMark).where(PrelabelMark.job_id == job_id))}


def test_a_resumed_run_proposes_only_unmarked_images_and_skips_reviewed_ones(claimed):
    engine, settings, job, image_ids, concept_id = claimed
    done_before = write_image_proposals(engine, job.id, image_ids[0], [concept_id], [], "base")  # an earlier attempt
    human = save_annotation(engine, image_id=image_ids[1], concept_id=concept_id, rle=box_rle(112, 112, 5, 5, 9, 9))
    assert run_prelabel(engine, settings, job) == "succeeded"
    marks = _marks(engine, job.id)
    assert sorted(marks) == image_ids and marks[image_ids[0]].id == done_before.id  # not proposed again
    assert marks[image_ids[1]].skipped and [a.id for a in list_annotations(engine, image_ids[1])] == [human.id]
    for image_id in image_ids[2:]:
        assert len(list_annotations(engine, image_id)) == marks[image_id].proposals > 0
        assert set(map(int, json.loads(marks[image_id].presence_json))) == {concept_id}
    finished = get_job(engine, job.id)
    assert (finished.state, finished.step, finished.total_steps) == ("succeeded", NUM_IMAGES, NUM_IMAGES)


def test_cancel_stops_the_run_and_keeps_what_was_written(claimed):
    engine, settings, job, image_ids, _ = claimed
    assert request_cancel(engine, job.id) == "running"
    assert run_prelabel(engine, settings, job) == "cancelled"
    assert get_job(engine, job.id).state == "cancelled"
    assert not _marks(engine, job.id)  # the flag was read before the first batch
