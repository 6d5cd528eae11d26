"""Submitting pre-label jobs: the frozen targets, refusals, and the re-proposal after a fine-tune."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from app.jobs.lifecycle import JobError, claim_job, finish_job, insert_job, record_adapter
from app.jobs.prelabel import prelabel_config, submit_prelabel, target_image_ids
from app.settings import Settings
from app.store.db import write_session
from app.store.models import Image, Project
from app.store.projects import add_concept
from tests.jobs.conftest import new_store
from tests.store.conftest import add_image
from worker.run_prelabel import repropose_after_finetune


def _store(tmp_path):
    engine, project_id = new_store(tmp_path / "data")
    concept = add_concept(engine, project_id, "crack")
    images = [add_image(engine, project_id, status=status) for status in ("unlabelled", "proposed", "reviewed")]
    with write_session(engine) as session:
        session.execute(update(Image).where(Image.id == images[1].id).values(split="val"))
    return engine, project_id, concept, images


def test_targets_are_unreviewed_images_of_the_filter_and_the_config_is_checked(tmp_path):
    engine, project_id, concept, (unlabelled, proposed, reviewed) = _store(tmp_path)
    assert target_image_ids(engine, project_id) == [unlabelled.id, proposed.id]
    assert target_image_ids(engine, project_id, split="val") == [proposed.id]
    assert target_image_ids(engine, project_id, statuses=("unlabelled",)) == [unlabelled.id]
    with pytest.raises(JobError, match="statuses"):
        target_image_ids(engine, project_id, statuses=("reviewed",))
    sent = []
    job = submit_prelabel(engine, project_id, sent.append, model_source="m", split="train")
    assert sent == [job.id] and json.loads(job.dataset_snapshot) == [unlabelled.id]
    assert json.loads(job.config_json)["concept_ids"] == [concept.id]
    with pytest.raises(JobError, match="unknown keys \\['extra'\\]"):
        prelabel_config({**json.loads(job.config_json), "extra": 1})
    with pytest.raises(JobError, match="adapter 99"):
        submit_prelabel(engine, project_id, sent.append, model_source="m", adapter_id=99)
    with pytest.raises(JobError, match="concepts \\[98\\]"):
        submit_prelabel(engine, project_id, sent.append, model_source="m", concept_ids=[98])
    engine.dispose()


def test_a_successful_finetune_reproposes_only_when_the_project_says_auto(tmp_path):
    engine, project_id, _, (unlabelled, proposed, _) = _store(tmp_path)
    settings = Settings(DATA_DIR=tmp_path / "data")
    train = insert_job(engine, project_id, "train", "{}", "[[1, 1]]")
    claim_job(engine, train.id, "w")
    finish_job(engine, train.id, "succeeded")
    adapter = record_adapter(engine, project_id, train.id, "job-1", "adapters/job-1")
    assert repropose_after_finetune(engine, settings, train, "models/tiny") is None  # "ask" by default
    with write_session(engine) as session:
        session.execute(update(Project).where(Project.id == project_id).values(prelabel_after_finetune="auto"))
    job = repropose_after_finetune(engine, settings, train, "models/tiny")
    assert job.kind == "prelabel" and job.enqueued_at is not None  # sent on the embedded broker
    assert json.loads(job.dataset_snapshot) == [unlabelled.id, proposed.id]
    assert json.loads(job.config_json)["adapter_id"] == adapter.id
    assert repropose_after_finetune(engine, settings, train, "models/tiny") is None  # one active job per project
    engine.dispose()
