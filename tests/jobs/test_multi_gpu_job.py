"""A job with `gpus: 2, device: cpu` through the real worker path: worker.train claims it and
runs `python -m torch.distributed.run --nproc-per-node=2 -m worker.run_job <id>`, two gloo
processes on the CPU (architecture.md, "multi-GPU").

Checked from the rows: the job succeeds with one adapter that loads with plain PEFT;
every metric row is written once (only rank 0 writes); and each step's num_boxes row is
the all-reduced count, (boxes on rank 0 + boxes on rank 1) / 2, recomputed here from the
job's exported data and the two ranks' DistributedSampler shards (rank 0's own count differs).

The database is the scale-out one, PostgreSQL, when one answers, else a SQLite file: a run
costs about 40 s on two cores, so it runs once; the two-worker test and the job-store
tests cover both databases.
The loss normalisation itself is covered by tests/sam3_lora/test_losses_ddp.py.
"""
from __future__ import annotations

import math
import uuid
from collections import Counter
from functools import partial
from typing import Iterator

import pytest
from peft import PeftModel
from torch.utils.data import DistributedSampler
from transformers import Sam3Model

from app.jobs.embedded_worker import start_worker, stop_worker
from app.jobs.lifecycle import FINAL_STATES, get_job, submit_job
from app.jobs.metrics import read_metrics
from app.jobs.queue import make_celery, send_train
from app.settings import Settings
from sam3_lora.tiny import build_tiny_tokenizer
from sam3_lora.train_data import build_train_data
from tests.conftest import DEFAULT_POSTGRES_URL
from tests.jobs.test_train_task import (adapters_of, job_config, job_deadline_s, job_row, logs, new_project,
                                        wait_for, worker_env)
from tests.services import fresh_postgres_database, postgres_answers
from worker.run_job import build_train_config, export_job_data

WORLD_SIZE = 2
MAX_STEPS = 6  # past the end of the first epoch, so the second epoch's shards count too


def expected_num_boxes(settings: Settings, engine, job_id: int, steps: int) -> tuple[list[float], list[float]]:
    """Per step: (all-reduced num_boxes, rank 0's own count), both clamped to >= 1 like compute_num_boxes."""
    job = get_job(engine, job_id)
    cfg = build_train_config(job, settings, export_job_data(engine, settings, job))  # reuses the job's export
    data = build_train_data(cfg, build_tiny_tokenizer(), 112)
    data.close()  # only its dataset is read here: items are (epoch, image) groups of find-queries
    batch, dataset = cfg.data.batch_size, data.train
    reduced, rank0 = [], []
    epoch = 0
    while len(reduced) < steps:
        per_rank = []
        for rank in range(WORLD_SIZE):
            sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
            order = list(sampler)
            per_rank.append([sum(len(query["target"]["boxes"]) for i in order[start:start + batch]
                                 for query in dataset[(epoch, i)]["find_queries"])
                             for start in range(0, len(order), batch)])
        for boxes_0, boxes_1 in zip(*per_rank):
            reduced.append(max((boxes_0 + boxes_1) / WORLD_SIZE, 1.0))
            rank0.append(max(float(boxes_0), 1.0))
        epoch += 1
    return reduced[:steps], rank0[:steps]


@pytest.fixture
def database_url(monkeypatch) -> Iterator[str]:
    """A fresh migrated PostgreSQL database as DATABASE_URL when a server answers; else "" (SQLite in DATA_DIR)."""
    if not postgres_answers(DEFAULT_POSTGRES_URL):
        yield ""
        return
    with fresh_postgres_database(DEFAULT_POSTGRES_URL) as url:
        monkeypatch.setenv("DATABASE_URL", url)  # read by Settings in new_project, passed on to the worker
        yield url


def test_a_two_process_job_trains_once_through_the_worker(database_url, redis_url, tmp_path, tiny_model_dir):
    settings, engine, project_id, snapshot = new_project(tmp_path / "data", tmp_path / "synthetic")
    assert settings.database_url.startswith("postgresql" if database_url else "sqlite")
    queue = f"test-multi-gpu-{uuid.uuid4().hex[:8]}"  # a shared Redis may serve other runs
    worker = start_worker(worker_env(settings, redis_url), settings.DATA_DIR, queues=queue,
                          log_path=settings.DATA_DIR / "worker.log")
    try:
        send = partial(send_train, make_celery(Settings(DATA_DIR=settings.DATA_DIR, REDIS_URL=redis_url),
                                               default_queue=queue))
        config = {**job_config(tiny_model_dir, max_steps=MAX_STEPS, checkpoint_every=3), "gpus": WORLD_SIZE}
        job = submit_job(engine, project_id, config, snapshot, send)
        done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                        f"job {job.id} did not finish", timeout_s=2 * job_deadline_s(MAX_STEPS))  # torchrun and two ranks: twice the start-up
        assert (done.state, done.error, done.attempt, done.step) == ("succeeded", "", 1, MAX_STEPS), logs(settings)
        # The row is final before torchrun has reaped its ranks; stopping the worker now would
        # signal its whole process group, torchrun included. Wait for the task to return.
        wait_for(lambda: "succeeded in" in (settings.DATA_DIR / "worker.log").read_text(), settings,
                 f"the worker's task for job {job.id} did not return")
    finally:
        stop_worker(worker, timeout=15)

    rows = read_metrics(engine, job.id)
    repeated = [key for key, count in Counter((r.step, r.split, r.name) for r in rows).items() if count > 1]
    assert repeated == []  # rank 1 wrote nothing
    assert sorted(r.step for r in rows if r.name == "loss" and r.split == "train") == list(range(1, MAX_STEPS + 1))
    assert {r.step for r in rows if r.name == "segm_mAP" and r.split == "val"} == {0, MAX_STEPS}
    assert all(math.isfinite(r.value) for r in rows)

    logged = [r.value for r in sorted((r for r in rows if r.name == "num_boxes" and r.split == "train"),
                                      key=lambda r: r.step)]
    reduced, rank0_only = expected_num_boxes(settings, engine, job.id, MAX_STEPS)
    assert logged == pytest.approx(reduced)
    assert logged != pytest.approx(rank0_only)  # the rows could tell a missing all-reduce apart

    [adapter] = adapters_of(engine, job.id)
    folder = settings.media_dir / adapter.path
    model = PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny_model_dir), folder)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    engine.dispose()
