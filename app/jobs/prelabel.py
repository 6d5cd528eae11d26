"""The pre-label job: "Propose for all unlabelled images" as a worker job (issue 17).

    submit_prelabel  -> Job(kind "prelabel", config, dataset_snapshot = [image_id, ...] frozen now)
                        + the same message as a fine-tune (queue.send_train: worker.train, which
                        runs worker.run_job, which hands kind "prelabel" to worker/run_prelabel.py)

Everything else is the fine-tune's machinery: claim (compare-and-set), heartbeat + progress
(`step` = images done, `total_steps` = images), cancel flag, the sweeps that re-queue a
killed worker's job, release on shutdown. Resume is per image: an image's proposals and its
PrelabelMark share one transaction (app/store/proposals.py), so a resumed run proposes
exactly the unmarked images.

Config (all keys required in the stored JSON, checked by `prelabel_config`):
  model_source  SAM3 folder or hub id the proposals use (the studio's loaded base)
  adapter_id    Adapter row to apply, or None for the base SAM3
  concept_ids   the concepts to propose (every concept of the project when none is chosen)
  threshold     proposals scoring below it are not stored (the Find all floor)
  image_batch   images per backbone pass (0 = 8 on a GPU, 2 on the CPU)
  device        "auto" (cuda when the worker has it) | "cpu" | "cuda"
"""
from __future__ import annotations

import json

from sqlalchemy import Engine
from sqlmodel import select

from app.jobs.lifecycle import JobError, SendJob, enqueue, get_job, insert_job
from app.store.db import read_session
from app.store.models import Adapter, Concept, Image, Job

KIND = "prelabel"
TARGET_STATUSES = ("unlabelled", "proposed")  # never "reviewed": a person's work is not re-proposed
DEFAULT_THRESHOLD = 0.3
DEVICES = ("auto", "cpu", "cuda")
CONFIG_KEYS = {"model_source", "adapter_id", "concept_ids", "threshold", "image_batch", "device"}


def prelabel_config(config: dict) -> dict:
    """Check a pre-label config (module docstring); returns it. Unknown or missing keys are refused."""
    unknown, missing = set(config) - CONFIG_KEYS, CONFIG_KEYS - set(config)
    if unknown or missing:
        raise JobError(f"pre-label config: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if not isinstance(config["model_source"], str) or not config["model_source"]:
        raise JobError("pre-label config: model_source must name a SAM3 folder or hub id")
    if config["adapter_id"] is not None and not isinstance(config["adapter_id"], int):
        raise JobError(f"pre-label config: adapter_id must be an integer or None, got {config['adapter_id']!r}")
    if not config["concept_ids"] or not all(isinstance(c, int) for c in config["concept_ids"]):
        raise JobError("pre-label config: concept_ids must list at least one concept id")
    if not (isinstance(config["threshold"], (int, float)) and 0.0 <= config["threshold"] <= 1.0):
        raise JobError(f"pre-label config: threshold must be in [0, 1], got {config['threshold']!r}")
    if not isinstance(config["image_batch"], int) or config["image_batch"] < 0:
        raise JobError(f"pre-label config: image_batch must be an integer >= 0, got {config['image_batch']!r}")
    if config["device"] not in DEVICES:
        raise JobError(f"pre-label config: device must be one of {', '.join(DEVICES)}, got {config['device']!r}")
    return config


def target_image_ids(engine: Engine, project_id: int, split: str | None = None,
                     statuses: tuple[str, ...] = TARGET_STATUSES) -> list[int]:
    """The project's images to propose for, in id order: of `statuses` (never reviewed ones), of `split` if given."""
    if not statuses or "reviewed" in statuses or not set(statuses) <= set(TARGET_STATUSES):
        raise JobError(f"pre-label statuses must be some of {', '.join(TARGET_STATUSES)}, got {statuses!r}")
    query = select(Image.id).where(Image.project_id == project_id, Image.status.in_(statuses))
    if split:
        query = query.where(Image.split == split)
    with read_session(engine) as session:
        return list(session.exec(query.order_by(Image.id)))


def _check_refs(engine: Engine, project_id: int, adapter_id: int | None, concept_ids: list[int] | None) -> list[int]:
    with read_session(engine) as session:
        project_concepts = list(session.exec(select(Concept.id).where(Concept.project_id == project_id)
                                             .order_by(Concept.id)))
        if adapter_id is not None:
            adapter = session.get(Adapter, adapter_id)
            if adapter is None or adapter.project_id != project_id:
                raise JobError(f"adapter {adapter_id} is not an adapter of project {project_id}")
    if not project_concepts:
        raise JobError(f"project {project_id} has no concepts: add one before proposing")
    chosen = list(concept_ids or project_concepts)
    strangers = [c for c in chosen if c not in project_concepts]
    if strangers:
        raise JobError(f"concepts {strangers} are not concepts of project {project_id}")
    return chosen


def submit_prelabel(
    engine: Engine, project_id: int, send: SendJob, model_source: str, adapter_id: int | None = None,
    concept_ids: list[int] | None = None, split: str | None = None, statuses: tuple[str, ...] = TARGET_STATUSES,
    threshold: float = DEFAULT_THRESHOLD, image_batch: int = 0, device: str = "auto",
) -> Job:
    """Freeze the target images, insert the queued pre-label job and send it; returns the row.

    Refused (JobError): no image to propose for, unknown adapter or concept, a bad setting,
    or another active job of the project (lifecycle.insert_job). Broker down: the job waits
    queued and the sweep sends it (as a fine-tune does).
    """
    chosen = _check_refs(engine, project_id, adapter_id, concept_ids)
    config = prelabel_config({"model_source": model_source, "adapter_id": adapter_id, "concept_ids": chosen,
                              "threshold": float(threshold), "image_batch": image_batch, "device": device})
    image_ids = target_image_ids(engine, project_id, split, statuses)
    if not image_ids:
        where = f" in split {split!r}" if split else ""
        raise JobError(f"project {project_id} has no {' or '.join(statuses)} image{where} to propose for")
    job = insert_job(engine, project_id, KIND, json.dumps(config, sort_keys=True), json.dumps(image_ids))
    enqueue(engine, job.id, send)
    return get_job(engine, job.id)
