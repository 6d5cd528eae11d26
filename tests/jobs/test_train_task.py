"""The training task end to end with real worker processes (app/jobs/embedded_worker.py),
real brokers (Redis and the embedded SQLite file) and the tiny SAM3 on a tiny synthetic project.

The helpers at the top are shared with test_crash_recovery.py: a project built through
the store (create_project, add_concept, import_coco of write_synthetic_coco output),
the tiny-model job config, workers with the studio's environment, and waits on rows.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from huggingface_hub import ModelCard
from peft import PeftModel
from PIL import Image as PILImage
from sqlalchemy import Engine
from sqlmodel import SQLModel, select

from app.jobs.lifecycle import FINAL_STATES, request_cancel, submit_job
from app.jobs.metrics import read_metrics
from app.jobs.sweep import enqueue_pending
from app.settings import Settings
from app.store.coco_export import dataset_snapshot
from app.store.coco_import import import_coco
from app.store.db import make_engine, read_session
from app.store.models import Adapter, Job
from app.store.projects import add_concept, create_project
from sam3_lora.synthetic import write_synthetic_coco
from tests.waiting import job_rows, log_tails, wait_until, work_deadline_s
from transformers import Sam3Model
from app.jobs.embedded_worker import start_worker, stop_worker
from app.jobs.queue import make_celery, send_train

REPO_ROOT = Path(__file__).resolve().parents[2]
# Measured on an idle 2-core machine: a cold worker plus its training child importing torch and
# transformers take ~8 s before step 1; a tiny-SAM3 step with its row writes ~0.2 s.
WORKER_START_S = 20
STEP_S = 0.5
NUM_IMAGES = 10
TEST_REDIS_DB = 7  # our own database: other test runs on the same Redis use the "train" queue name too


def own_redis_db(redis_url: str, db: int = TEST_REDIS_DB) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def new_project(data_dir: Path, synthetic_dir: Path) -> tuple[Settings, Engine, int, list]:
    """A store in data_dir with one project of NUM_IMAGES synthetic 112 px images; (settings, engine, project, snapshot)."""
    settings = Settings(DATA_DIR=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    SQLModel.metadata.create_all(engine)
    project = create_project(engine, f"shapes-{data_dir.name}")
    for name in ("circle", "square"):
        add_concept(engine, project.id, name)
    json_path = write_synthetic_coco(synthetic_dir, num_images=NUM_IMAGES, image_size=112,
                                     concepts=("circle", "square"), max_instances=2, seed=3)
    report = import_coco(engine, settings.media_dir, project.id, json_path, synthetic_dir / "images",
                         max_bytes=10 * 1024 * 1024)
    assert report.annotations_imported > 0, report.skipped
    return settings, engine, project.id, dataset_snapshot(engine, project.id)


def job_config(tiny_model_dir: Path, max_steps: int = 24, checkpoint_every: int = 5) -> dict:
    return {
        "model": {"source": str(tiny_model_dir)},
        "lora": {"rank": 4, "alpha": 8.0},
        "data": {"train_annotations": "set-by-the-worker", "train_images": "set-by-the-worker",
                 "batch_size": 2, "val_fraction": 0.2, "augment": {"hflip_prob": 0.0, "scale_jitter": [1.0, 1.0]}},
        "schedule": {"max_steps": max_steps},
        "loss": {"num_points": 64},
        "device": "cpu", "precision": "fp32",
        "eval_every": 0, "log_every": 1, "checkpoint_every": checkpoint_every,
    }


def worker_env(settings: Settings, redis_url: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "DATABASE_URL": settings.database_url, "CELERY_EXTRA_TASK_MODULES": "",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
            **extra}


def launch_worker(settings: Settings, redis_url: str, name: str = "worker", **extra: str):
    return start_worker(worker_env(settings, redis_url, **extra), settings.DATA_DIR,
                        log_path=settings.DATA_DIR / f"{name}.log")


def sender(settings: Settings, redis_url: str):
    return partial(send_train, make_celery(Settings(DATA_DIR=settings.DATA_DIR, REDIS_URL=redis_url)))


def logs(settings: Settings) -> str:
    return log_tails(sorted(settings.DATA_DIR.glob("*.log")) + sorted(settings.DATA_DIR.glob("jobs/*/*.log")))


def job_deadline_s(steps: int = 24) -> float:
    """How long a job of `steps` tiny-SAM3 steps may take from a cold worker (tests/waiting.py)."""
    return work_deadline_s(WORKER_START_S, steps, STEP_S)


def wait_for(condition, settings: Settings, what: str, timeout_s: float | None = None):
    """Wait on a worker (default deadline: a 24-step job); on failure show every job row and the logs."""
    def evidence() -> str:
        engine = make_engine(settings.database_url)
        try:
            with read_session(engine) as session:
                job_ids = list(session.exec(select(Job.id)))
            return f"{job_rows(engine, job_ids)}\nlogs:\n{logs(settings)}"
        finally:
            engine.dispose()
    return wait_until(condition, what, job_deadline_s() if timeout_s is None else timeout_s, evidence)


def adapters_of(engine: Engine, job_id: int) -> list[Adapter]:
    with read_session(engine) as session:
        return list(session.exec(select(Adapter).where(Adapter.job_id == job_id)))


def job_row(engine: Engine, job_id: int) -> Job:
    with read_session(engine) as session:
        return session.get(Job, job_id)


# ----------------------------------------------------------------------------- tests

def _submit_and_finish(settings, engine, project_id, snapshot, send, tiny_model_dir) -> Job:
    job = submit_job(engine, project_id, job_config(tiny_model_dir), snapshot, send)
    assert job.enqueued_at is not None
    wait_for(lambda: job_row(engine, job.id).state == "running", settings, f"job {job.id} did not start")
    first = wait_for(lambda: read_metrics(engine, job.id), settings, f"job {job.id} wrote no metric row")
    wait_for(lambda: len(read_metrics(engine, job.id)) > len(first), settings, f"job {job.id}'s rows did not grow")
    wait_for(lambda: job_row(engine, job.id).state in FINAL_STATES, settings, f"job {job.id} did not finish")
    return job_row(engine, job.id)


@pytest.fixture(scope="module", params=["redis", "embedded"])
def running_worker(request, tmp_path_factory):
    """(settings, engine, project_id, snapshot, send, redis_url) with one live worker."""
    root = tmp_path_factory.mktemp(f"train-{request.param}")
    settings, engine, project_id, snapshot = new_project(root / "data", root / "synthetic")
    redis_url = own_redis_db(request.getfixturevalue("redis_url")) if request.param == "redis" else ""
    proc = launch_worker(settings, redis_url)
    try:
        yield settings, engine, project_id, snapshot, sender(settings, redis_url), redis_url
    finally:
        stop_worker(proc, timeout=15)
        engine.dispose()


def test_a_job_trains_to_a_loadable_adapter_with_a_model_card(running_worker, tiny_model_dir):
    settings, engine, project_id, snapshot, send, _ = running_worker
    done = _submit_and_finish(settings, engine, project_id, snapshot, send, tiny_model_dir)
    assert (done.state, done.error, done.step, done.total_steps, done.attempt) == ("succeeded", "", 24, 24, 1)
    rows = read_metrics(engine, done.id)
    train_losses = [r for r in rows if r.name == "loss" and r.split == "train"]
    assert [r.step for r in train_losses] == list(range(1, 25))  # log_every 1, no duplicate
    assert {"lr", "images_per_s", "num_boxes", "grad_norm", "loss_bbox"} <= {r.name for r in rows}
    assert {r.step for r in rows if r.name == "segm_mAP" and r.split == "val"} == {0, 24}  # before / after
    [adapter] = adapters_of(engine, done.id)
    assert adapter.name == f"job-{done.id}" and adapter.path == f"adapters/job-{done.id}"
    metrics = json.loads(adapter.metrics_json)
    assert metrics["steps"] == 24 and "segm_mAP" in metrics["eval_after"] and "segm_mAP" in metrics["eval_before"]
    folder = settings.media_dir / adapter.path
    card = ModelCard.load(folder / "README.md")
    assert f"job {done.id}" in card.text and "segm mAP" in card.text and "loss_curve.png" in card.text
    assert card.data.library_name == "peft" and "sam3" in card.data.tags and card.data.license_name == "sam-license"
    assert "| circle |" in card.text  # the data summary and per-concept AP of the job's own run
    with PILImage.open(folder / "loss_curve.png") as curve:
        assert curve.size == (640, 360)
    base = Sam3Model.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, folder)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert not list(settings.media_dir.glob("adapters/.*"))  # no temp sibling left behind


def test_cancel_stops_at_the_next_step_and_keeps_a_partial_adapter(running_worker, tiny_model_dir):
    settings, engine, project_id, snapshot, send, _ = running_worker
    job = submit_job(engine, project_id, job_config(tiny_model_dir, max_steps=400), snapshot, send)
    wait_for(lambda: job_row(engine, job.id).step >= 3, settings, f"job {job.id} did not reach step 3")
    assert request_cancel(engine, job.id) == "running"
    step_at_request = job_row(engine, job.id).step
    done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                    f"job {job.id} did not stop")
    assert done.state == "cancelled"
    assert step_at_request <= done.step <= step_at_request + 2  # the step in flight, then stop
    [adapter] = adapters_of(engine, job.id)
    assert "partial" in adapter.name and (settings.media_dir / adapter.path / "adapter_model.safetensors").is_file()
    assert max(r.step for r in read_metrics(engine, job.id)) <= done.step


@pytest.mark.parametrize("running_worker", ["redis"], indirect=True)  # the embedded broker is a file: never unreachable
def test_a_job_submitted_while_the_broker_is_down_runs_once_after_the_sweep(running_worker, tiny_model_dir):
    settings, engine, project_id, snapshot, send, redis_url = running_worker
    closed = partial(send_train, make_celery(Settings(DATA_DIR=settings.DATA_DIR, REDIS_URL="redis://127.0.0.1:1/0")))
    job = submit_job(engine, project_id, job_config(tiny_model_dir, max_steps=4), snapshot, closed)
    assert (job.state, job.enqueued_at) == ("queued", None)
    assert enqueue_pending(engine, send) == [job.id]
    assert enqueue_pending(engine, send) == []  # already in the broker: not sent twice
    done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                    f"job {job.id} did not finish")
    assert (done.state, done.attempt) == ("succeeded", 1)
    assert len(adapters_of(engine, job.id)) == 1


@pytest.mark.parametrize("running_worker", ["embedded"], indirect=True)  # one broker is enough for this
def test_a_bad_dataset_fails_the_job_with_a_readable_error(running_worker, tiny_model_dir):
    settings, engine, project_id, snapshot, send, redis_url = running_worker
    config = job_config(tiny_model_dir, max_steps=4)
    config["data"]["image_size"] = 113  # not a multiple of the patch size: refused by TrainConfig
    job = submit_job(engine, project_id, config, snapshot, send)
    done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                    f"job {job.id} did not finish")
    assert done.state == "failed"
    assert done.error.startswith("ConfigError: ") and "data.image_size" in done.error
    assert adapters_of(engine, job.id) == []
