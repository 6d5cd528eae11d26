"""Run one claimed pre-label job (app/jobs/prelabel.py) to its end, inside `python -m worker.run_job`.

    frozen image ids  minus  the images this job already marked (a resume after a kill)
      -> batches of image_batch images -> sam3_lora.predict_batch.propose_batch
         (one backbone pass per batch, every concept per image)
      -> per image, ONE transaction: proposals + PrelabelMark (app/store/proposals.py)
      -> beat: step = images marked, total_steps = images; the cancel flag stops the loop
      -> metric rows images_per_s (the ETA of the Train tab's progress: app/jobs/progress.py)

A kill between the model pass and the writes only loses computation: unmarked images are
proposed by the next attempt, marked ones never again. Outcomes: succeeded, cancelled
(what was written stays), failed with "<Type>: <message>" (run_job records it).
`repropose_after_finetune` is the fine-tune's follow-up (project.prelabel_after_finetune).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch
from PIL import Image as PILImage
from sqlalchemy import Engine
from sqlmodel import select

from app.jobs.lifecycle import JobError, beat, finish_job, get_job
from app.jobs.metrics import MetricWriter
from app.jobs.prelabel import prelabel_config, submit_prelabel
from app.jobs.queue import train_sender
from app.settings import Settings
from app.store.adapters import adapter_of_job
from app.store.db import read_session
from app.store.masks import mask_to_rle
from app.store.media import media_path
from app.store.models import Adapter, Concept, Image, Job, Project
from app.store.proposals import Proposal, done_image_ids, model_label, write_image_proposals
from sam3_lora.predict import load_predictor
from sam3_lora.predict_batch import propose_batch

logger = logging.getLogger(__name__)


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the pre-label job asks for device cuda but this worker has no GPU")
    return choice


def _adapter_folder(engine: Engine, settings: Settings, adapter_id: int | None) -> str | None:
    if adapter_id is None:
        return None
    with read_session(engine) as session:
        adapter = session.get(Adapter, adapter_id)
    if adapter is None:
        raise RuntimeError(f"adapter {adapter_id} was deleted after the pre-label job was submitted")
    return str(media_path(settings.media_dir, adapter.path))


def _concepts(engine: Engine, concept_ids: list[int]) -> list[Concept]:
    """The chosen concepts that still exist, in id order."""
    with read_session(engine) as session:
        concepts = list(session.exec(select(Concept).where(Concept.id.in_(concept_ids)).order_by(Concept.id)))
    if not concepts:
        raise RuntimeError(f"none of the concepts {concept_ids} exists any more")
    return concepts


def _load_images(engine: Engine, settings: Settings, image_ids: list[int]) -> list[tuple[int, np.ndarray]]:
    """(id, uint8 [H,W,3]) of the images that still exist."""
    with read_session(engine) as session:
        rows = {row.id: row.path for row in session.exec(select(Image).where(Image.id.in_(image_ids)))}
    loaded = []
    for image_id in image_ids:
        if image_id in rows:
            with PILImage.open(media_path(settings.media_dir, rows[image_id])) as source:
                loaded.append((image_id, np.array(source.convert("RGB"))))
    return loaded


def run_prelabel(engine: Engine, settings: Settings, job: Job) -> str:
    """Propose for every unmarked image of the running job (module docstring); returns the final state
    it set, or "" when the job is no longer this run's (swept and re-claimed)."""
    config = prelabel_config(json.loads(job.config_json))
    image_ids: list[int] = json.loads(job.dataset_snapshot)
    total = len(image_ids)
    done = done_image_ids(engine, job.id)
    todo = [image_id for image_id in image_ids if image_id not in done]
    if beat(engine, job.id, total - len(todo), total, attempt=job.attempt):
        return _end(engine, job)
    device = _device(config["device"])
    image_batch = config["image_batch"] or (8 if device == "cuda" else 2)
    concepts = _concepts(engine, config["concept_ids"])
    concept_ids = [c.id for c in concepts]
    model, tokenizer = load_predictor(config["model_source"], adapter=_adapter_folder(engine, settings,
                                      config["adapter_id"]), device=device)
    proposed_by = model_label(config["adapter_id"])
    logger.info("pre-label job %d: %d of %d images to go, %d concepts, %s, batches of %d on %s",
                job.id, len(todo), total, len(concepts), proposed_by, image_batch, device)
    started = time.monotonic()
    with MetricWriter(engine, job.id) as writer:
        for start in range(0, len(todo), image_batch):
            images = _load_images(engine, settings, todo[start:start + image_batch])
            found = propose_batch(model, tokenizer, [pixels for _, pixels in images], [c.name for c in concepts],
                                  score_threshold=config["threshold"])
            for (image_id, _), proposals in zip(images, found):
                rows = [Proposal(concept.id, mask_to_rle(instance.mask), min(max(instance.score, 0.0), 1.0))
                        for concept, instances in zip(concepts, proposals.instances)
                        for instance in instances if instance.mask.any()]
                write_image_proposals(engine, job.id, image_id, concept_ids, rows, proposed_by,
                                      presence=dict(zip(concept_ids, proposals.presence)))
            processed = min(start + image_batch, len(todo))  # images deleted meanwhile count as done
            marked = total - len(todo) + processed
            writer.add([{"step": marked, "name": "images_per_s",
                         "value": processed / max(time.monotonic() - started, 1e-6)}])
            if beat(engine, job.id, marked, total, attempt=job.attempt):
                return _end(engine, job)
    return _end(engine, job, finished=True)


def _end(engine: Engine, job: Job, finished: bool = False) -> str:
    """succeeded (all done) or cancelled (cancel requested); "" when the job is no longer this attempt's."""
    current = get_job(engine, job.id)
    if current.state != "running" or current.attempt != job.attempt:
        return ""
    if not finished and not current.cancel_requested:
        return ""
    state = "succeeded" if finished else "cancelled"
    return state if finish_job(engine, job.id, state, attempt=job.attempt) else ""


def repropose_after_finetune(engine: Engine, settings: Settings, train_job: Job, model_source: str) -> Job | None:
    """A fine-tune succeeded: when its project says "auto" (project.prelabel_after_finetune), submit a
    pre-label job of every unreviewed image with the new adapter; returns it (None: "ask", or nothing to do)."""
    with read_session(engine) as session:
        project = session.get(Project, train_job.project_id)
    adapter = adapter_of_job(engine, train_job.id)
    if project is None or project.prelabel_after_finetune != "auto" or adapter is None:
        return None
    try:
        job = submit_prelabel(engine, project.id, train_sender(settings), model_source=model_source,
                              adapter_id=adapter.id)
    except JobError as error:  # no unreviewed image, another job active: nothing to re-propose now
        logger.info("no re-proposal after job %d: %s", train_job.id, error)
        return None
    logger.info("job %d: re-proposing the unreviewed images with adapter %d as pre-label job %d",
                train_job.id, adapter.id, job.id)
    return job
