"""The pre-label job with a real worker, the real broker (Redis) and the tiny SAM3 (issue 17).

50 synthetic images: 5 reviewed (imported with their shapes), 3 carrying an older unreviewed
model proposal, the rest unlabelled. A pre-label job over every unreviewed image; the worker
is killed (SIGKILL) midway; a new worker's start sweep re-queues the stale job and it resumes:
every target image ends with exactly one mark of the job and the proposals of exactly one
write, the older proposals are replaced, the reviewed images are untouched.
"""
from __future__ import annotations

import json
import os
import signal
import time

from sqlalchemy import delete, update
from sqlmodel import SQLModel, select

from app.jobs.embedded_worker import stop_worker
from app.jobs.lifecycle import FINAL_STATES
from app.jobs.prelabel import submit_prelabel
from app.settings import Settings
from app.store.annotations import save_annotation
from app.store.coco_import import import_coco
from app.store.db import make_engine, read_session, write_session
from app.store.models import Annotation, AnnotationHistory, Image, PrelabelMark
from app.store.projects import add_concept, create_project
from sam3_lora.synthetic import write_synthetic_coco
from tests.jobs.process_tree import alive, child_pids
from tests.jobs.test_train_task import job_row, launch_worker, own_redis_db, sender, wait_for
from tests.waiting import work_deadline_s

NUM_IMAGES, REVIEWED, OLD_PROPOSALS = 50, 5, 3
STALE_AFTER_S = "3"
IMAGE_S = 0.3  # a tiny-SAM3 image with its write and beat on a loaded 2-core machine (measured ~0.05 s idle)


def _project(data_dir, synthetic_dir):
    """(settings, engine, project_id, concepts {name: id}) with the images described above."""
    settings = Settings(DATA_DIR=data_dir)
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    SQLModel.metadata.create_all(engine)
    project = create_project(engine, "prelabel")
    concepts = {name: add_concept(engine, project.id, name).id for name in ("circle", "square")}
    json_path = write_synthetic_coco(synthetic_dir, num_images=NUM_IMAGES, image_size=112,
                                     concepts=("circle", "square"), max_instances=2, seed=5)
    import_coco(engine, settings.media_dir, project.id, json_path, synthetic_dir / "images", max_bytes=10 << 20)
    with write_session(engine) as session:  # an import is reviewed work: all but the first REVIEWED become new uploads
        later = select(Image.id).where(Image.project_id == project.id).order_by(Image.id).offset(REVIEWED)
        unlabelled = list(session.scalars(later))
        session.execute(delete(Annotation).where(Annotation.image_id.in_(unlabelled)))
        session.execute(update(Image).where(Image.id.in_(unlabelled)).values(status="unlabelled"))
    return settings, engine, project.id, concepts


def _annotations(engine, image_ids=None) -> list[Annotation]:
    with read_session(engine) as session:
        query = select(Annotation)
        if image_ids is not None:
            query = query.where(Annotation.image_id.in_(image_ids))
        return list(session.exec(query.order_by(Annotation.id)))


def test_a_killed_prelabel_job_resumes_and_proposes_each_image_once(redis_url, tmp_path, tiny_model_dir):
    settings, engine, project_id, concepts = _project(tmp_path / "data", tmp_path / "synthetic")
    with read_session(engine) as session:
        images = list(session.exec(select(Image).where(Image.project_id == project_id).order_by(Image.id)))
    reviewed = [image.id for image in images if image.status == "reviewed"]
    assert len(reviewed) == REVIEWED
    targets = [image for image in images if image.status != "reviewed"]
    old = [save_annotation(engine, image_id=image.id, concept_id=concepts["circle"], source="model", score=0.9,
                           rle={"size": [image.height, image.width], "counts": [0, 4, image.height * image.width - 4]})
           for image in targets[-OLD_PROPOSALS:]]
    reviewed_before = [(a.id, a.revision, a.rle, a.deleted) for a in _annotations(engine, reviewed)]
    url = own_redis_db(redis_url)
    first = launch_worker(settings, url, name="first", JOB_STALE_AFTER_S=STALE_AFTER_S)
    second = None
    try:
        job = submit_prelabel(engine, project_id, sender(settings, url), model_source=str(tiny_model_dir),
                              threshold=0.0, image_batch=1, device="cpu")
        assert json.loads(job.dataset_snapshot) == [image.id for image in targets]
        wait_for(lambda: job_row(engine, job.id).step >= 8, settings, f"pre-label job {job.id} did not pass image 8",
                 timeout_s=work_deadline_s(20, 8, IMAGE_S))
        children = child_pids(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in children), settings, "the job's child outlived its worker",
                 timeout_s=work_deadline_s(3))
        killed = job_row(engine, job.id)
        assert killed.state == "running" and killed.step < len(targets), "the kill came after the job's end"
        time.sleep(float(STALE_AFTER_S) + 0.5)
        second = launch_worker(settings, url, name="second", JOB_STALE_AFTER_S=STALE_AFTER_S)
        done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                        f"pre-label job {job.id} did not finish after the restart",
                        timeout_s=work_deadline_s(20, len(targets), IMAGE_S))
        assert (done.state, done.attempt, done.step, done.total_steps) == ("succeeded", 2, len(targets), len(targets))
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc, timeout=15)
    with read_session(engine) as session:
        marks = list(session.exec(select(PrelabelMark).where(PrelabelMark.job_id == job.id)))
        authors = {row.annotation_id: row.author for row in session.exec(select(AnnotationHistory))}
    assert sorted(mark.image_id for mark in marks) == [image.id for image in targets]  # each image once
    assert not any(mark.skipped for mark in marks)
    written = [a for a in _annotations(engine, [image.id for image in targets]) if a.proposed_by == "base"]
    assert sum(mark.proposals for mark in marks) == len(written) > 0  # no image's proposals written twice
    assert all(a.source == "model" and a.revision == 1 and not a.deleted for a in written)
    assert all(authors[a.id] == f"pre-label job {job.id}" for a in written)
    assert all(a.score is not None and 0 <= a.score <= 1 for a in written)
    replaced = {a.id: a for a in _annotations(engine, [a.image_id for a in old])}
    assert all(replaced[a.id].deleted and replaced[a.id].revision == 2 for a in old)  # re-run replaced them
    assert [(a.id, a.revision, a.rle, a.deleted) for a in _annotations(engine, reviewed)] == reviewed_before
    with read_session(engine) as session:
        statuses = {image.id: image.status for image in session.exec(select(Image))}
    assert all(statuses[image_id] == "reviewed" for image_id in reviewed)
    with_proposals = {a.image_id for a in written}
    assert all(statuses[image_id] == "proposed" for image_id in with_proposals)
    engine.dispose()
