"""Run one claimed job to its end: `python -m worker.run_job <job_id>`. A fine-tune as below; a
pre-label job (kind "prelabel") goes to worker/run_prelabel.py in this same child process, so it
shares the claim, heartbeat, cancel, sweeps and shutdown handling of a fine-tune.

The Celery task (worker/tasks.py) claims the job, then starts this module in a child
process and waits for it; the child's exit returns every byte of GPU memory, which
`worker_max_tasks_per_child` cannot do under `--pool=solo`. Under torchrun
(`gpus > 1`) every rank runs this module; only rank 0 (settings.RANK, set by torchrun)
exports, writes rows and files.

    job row (frozen config + dataset snapshot)
      -> DATA_DIR/jobs/<id>/data/{train,val}/  COCO export of the snapshot (once; reused on resume)
      -> TrainConfig (data paths replaced, output_dir DATA_DIR/jobs/<id>/run, resume "auto")
      -> sam3_lora.train.train(cfg, on_event): metric rows, heartbeat, cancel, checkpoints
      -> DATA_DIR/media/adapters/job-<id>/ (PEFT folder + model card), Adapter row, final state

Plain functions, testable without Celery. Outcomes: succeeded (adapter recorded),
cancelled (the partial adapter recorded, named as partial), failed with
"<ExceptionType>: <message>". Every job-row write carries the attempt of the claim,
so a runner whose job was swept and re-claimed elsewhere changes nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select

from app.jobs.lifecycle import beat, finish_job, get_job, record_adapter, set_checkpoint
from app.jobs.metrics import MetricWriter, delete_metrics_after
from app.jobs.parent_death import watch_parent
from app.jobs.prelabel import KIND as PRELABEL
from app.jobs.recipe import job_train_config
from app.settings import Settings, load_settings
from app.store.coco_export import export_coco
from app.store.dataset_stats import has_val_images
from app.store.db import make_engine, read_session
from app.store.media import media_path
from app.store.models import Adapter, Job
from app.store.projects import get_project
from sam3_lora.adapter_io import replace_folder_atomically
from sam3_lora.config import TrainConfig
from sam3_lora.model_card import write_model_card
from sam3_lora.train import TrainResult, train
from worker.model_card import card_review_outcomes, job_card_facts
from worker.run_prelabel import repropose_after_finetune, run_prelabel

logger = logging.getLogger(__name__)

EXPORT_WAIT_S = 600  # ranks > 0 wait this long for rank 0's export
SKIPPED_EVENT_KEYS = {"type", "step", "epoch", "split", "per_concept"}


def job_folder(settings: Settings, job_id: int) -> Path:
    return settings.DATA_DIR / "jobs" / str(job_id)


def adapter_relative_path(job_id: int) -> str:
    """Where a job's adapter lives, relative to the media folder."""
    return f"adapters/job-{job_id}"


def export_job_data(engine: Engine, settings: Settings, job: Job) -> dict:
    """Export the job's frozen snapshot once (reused on resume); returns the `data` paths for TrainConfig.

    Images the project marks `val` become the validation set; a project without any
    keeps the config's val_fraction (a random split of the training images).
    annotations.json is written last and atomically, so its presence means a complete export.
    """
    data_dir = job_folder(settings, job.id) / "data"
    train_json, val_json = data_dir / "train" / "annotations.json", data_dir / "val" / "annotations.json"
    use_val = has_val_images(engine, job.project_id)
    if settings.RANK == 0:
        snapshot = json.loads(job.dataset_snapshot)
        for split, path in (("train", train_json), ("val", val_json)) if use_val else ((None, train_json),):
            if not path.is_file():
                export_coco(engine, settings.media_dir, job.project_id, path.parent, snapshot=snapshot, split=split)
    else:
        deadline = time.monotonic() + EXPORT_WAIT_S
        while not (train_json.is_file() and (val_json.is_file() or not use_val)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id}: rank 0 did not export the dataset within {EXPORT_WAIT_S} s")
            time.sleep(0.5)
    paths = {"train_annotations": str(train_json), "train_images": str(train_json.parent / "images")}
    if use_val:
        paths.update(val_annotations=str(val_json), val_images=str(val_json.parent / "images"), val_fraction=None)
    return paths


def build_train_config(job: Job, settings: Settings, data_paths: dict) -> TrainConfig:
    """The job's frozen config with the exported data, DATA_DIR/jobs/<id>/run and resume "auto".

    Model source: the config's model.source, else settings.SAM3_MODEL.
    """
    return job_train_config(json.loads(job.config_json), data_paths, settings.SAM3_MODEL,
                            str(job_folder(settings, job.id) / "run"))


def metric_rows(event: dict, split: str) -> list[dict]:
    """One row per finite scalar of a step / eval event (losses, lr, images_per_s, num_boxes,
    grad_norm, segm_mAP, bbox_mAP); the loss-weighted copies and per-concept tables are left out."""
    rows = []
    for name, value in event.items():
        if name in SKIPPED_EVENT_KEYS or name.startswith("weighted/") or isinstance(value, (dict, list, str, bool)):
            continue
        if value is None or not math.isfinite(float(value)):
            continue  # e.g. mAP of a split with no objects; the row would be refused
        rows.append({"step": int(event["step"]), "epoch": float(event.get("epoch", 0.0)), "split": split,
                     "name": name, "value": float(value)})
    return rows


class _EventRecorder:
    """on_event of train(): rows, heartbeat, cancel flag, checkpoints of one attempt of one job."""

    def __init__(self, engine: Engine, job: Job, writer: MetricWriter):
        self.engine, self.job, self.writer = engine, job, writer
        self.stop_requested = False

    def __call__(self, event: dict) -> str | None:
        kind = event["type"]
        if kind == "start":
            # Rows after the resume point are written again by this run; a fresh start (step 0)
            # drops everything an earlier attempt wrote, eval-before included.
            start_step = event["start_step"]
            delete_metrics_after(self.engine, self.job.id, start_step if start_step > 0 else -1)
            return self._beat(start_step, event["total_steps"])
        if kind == "progress":
            return self._beat(event["step"], event["total_steps"])
        if kind == "step":
            self.writer.add(metric_rows(event, "train"))
        elif kind == "eval":
            self.writer.add(metric_rows(event, "val"))
        elif kind == "saving_checkpoint":
            # rows up to the checkpoint are in the database before its file exists: a resume from
            # it does not write them again, and a kill between the two must not lose them
            self.writer.flush()
        elif kind == "checkpoint":
            set_checkpoint(self.engine, self.job.id, event["path"], attempt=self.job.attempt)
        return "stop" if self.stop_requested else None

    def _beat(self, step: int, total_steps: int) -> str | None:
        if beat(self.engine, self.job.id, step, total_steps, attempt=self.job.attempt):
            self.stop_requested = True
        return "stop" if self.stop_requested else None


def publish_adapter(settings: Settings, job: Job, cfg: TrainConfig, result: TrainResult, partial: bool,
                    project_name: str = "", review_outcomes: dict | None = None) -> str:
    """Copy the run's adapter + model card into the media store atomically; returns its relative path.

    replace_folder_atomically: written into a temp sibling, fsynced, then swapped into place,
    so readers see the folder of an earlier attempt or the whole new one, never none.
    """
    relative = adapter_relative_path(job.id)

    def write(temp: Path) -> None:
        shutil.copytree(result.adapter_dir, temp, dirs_exist_ok=True)
        write_model_card(temp, job_card_facts(settings, job.id, project_name, cfg, result, partial, review_outcomes))

    replace_folder_atomically(media_path(settings.media_dir, relative), write)
    return relative


def _adapter_exists(engine: Engine, job_id: int) -> bool:
    with read_session(engine) as session:
        return session.exec(select(Adapter.id).where(Adapter.job_id == job_id)).first() is not None


def _finish(engine: Engine, settings: Settings, job: Job, cfg: TrainConfig, result: TrainResult) -> str:
    """Publish and record the adapter, then set the final state; returns it ("" when the job is no longer ours)."""
    current = get_job(engine, job.id)
    if current.state != "running" or current.attempt != job.attempt:
        logger.warning("job %d was taken from this run (now %s, attempt %d); leaving it", job.id,
                       current.state, current.attempt)
        return ""
    cancelled = result.stopped and current.cancel_requested
    if result.stopped and not cancelled:
        return ""  # beat said stop without a cancel: the job is no longer this run's
    relative = publish_adapter(settings, job, cfg, result, partial=cancelled,
                               project_name=get_project(engine, job.project_id).name,
                               review_outcomes=card_review_outcomes(engine, job.project_id))
    if not _adapter_exists(engine, job.id):  # a crash between record and finish must not record twice
        name = f"job-{job.id} (partial, step {result.steps})" if cancelled else f"job-{job.id}"
        record_adapter(engine, job.project_id, job.id, name, relative, base_model=cfg.model.source,
                       metrics={"steps": result.steps, "eval_before": result.eval_before,
                                "eval_after": result.eval_after, "dataset": result.dataset})
    state = "cancelled" if cancelled else "succeeded"
    finish_job(engine, job.id, state, attempt=job.attempt)
    return state


def run_job(settings: Settings, job_id: int) -> str:
    """Train the running job `job_id` to its end (a pre-label job: worker/run_prelabel.py);
    returns the final state it set ("" if none).

    Any exception fails the job with "<Type>: <message>" and is re-raised.
    """
    engine = make_engine(settings.database_url)
    try:
        job = get_job(engine, job_id)
        if job is None or job.state != "running":
            raise RuntimeError(f"job {job_id} is not running (state {getattr(job, 'state', 'missing')}); claim it first")
        if job.kind == PRELABEL:
            try:
                return run_prelabel(engine, settings, job)
            except Exception as error:
                finish_job(engine, job_id, "failed", error=f"{type(error).__name__}: {error}", attempt=job.attempt)
                raise
        try:
            cfg = build_train_config(job, settings, export_job_data(engine, settings, job))
            beat(engine, job_id, job.step, job.total_steps, attempt=job.attempt)  # export may have been long
            with MetricWriter(engine, job_id, max_delay_s=0.5) as writer:
                result = train(cfg, _EventRecorder(engine, job, writer))
            if settings.RANK != 0:
                return ""
            state = _finish(engine, settings, job, cfg, result)
        except Exception as error:
            if settings.RANK == 0:
                finish_job(engine, job_id, "failed", error=f"{type(error).__name__}: {error}", attempt=job.attempt)
            raise
        if state == "succeeded":
            try:
                repropose_after_finetune(engine, settings, job, cfg.model.source)
            except Exception:  # the adapter is safe; the user can still re-propose from the Train tab
                logger.exception("job %d: re-proposing after the fine-tune failed", job_id)
        return state
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m worker.run_job <job_id>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Never outlive the process that started this one (the worker, or torchrun for a rank of a
    # multi-GPU job, whose ranks get no parent-death signal): a lost run is the sweeps' to resume.
    watch_parent(os.getppid())
    try:
        state = run_job(load_settings(), int(argv[0]))
    except Exception:
        logger.exception("job %s failed", argv[0])
        return 1
    logger.info("job %s ended: %s", argv[0], state or "left to its new owner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
