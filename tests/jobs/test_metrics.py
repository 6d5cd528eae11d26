"""Metric rows: bulk append, the buffered writer (count, time, close), incremental reads, resume cleanup."""
from __future__ import annotations

import time

import pytest

from app.jobs.lifecycle import create_job, get_job
from app.jobs.metrics import MetricWriter, delete_metrics_after, read_metrics
from tests.jobs.conftest import CONFIG, SNAPSHOT, write_metric_rows
from worker.run_job import _EventRecorder


@pytest.fixture
def job_id(engine, project_id) -> int:
    return create_job(engine, project_id, CONFIG, SNAPSHOT).id


def loss(step: int, value: float = 1.0, name: str = "loss") -> dict:
    return {"step": step, "epoch": step / 10, "name": name, "value": value}


def steps(engine, job_id) -> list[int]:
    return [metric.step for metric in read_metrics(engine, job_id)]


def test_a_bad_row_refuses_its_whole_batch(engine, job_id):
    with MetricWriter(engine, job_id, max_delay_s=60) as writer:
        writer.add([loss(1), loss(1, name="lr")])
        with pytest.raises(ValueError, match="'loss' at step 2 of job .* not finite"):
            writer.add([loss(2), loss(2, float("nan"))])
        with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
            writer.add([{**loss(3), "colour": "red"}])
        with pytest.raises(ValueError, match="split 'test'"):
            writer.add([{**loss(3), "split": "test"}])
    assert [(m.step, m.name, m.split) for m in read_metrics(engine, job_id)] == [(1, "loss", "train"), (1, "lr", "train")]


def test_read_metrics_after_id_is_incremental(engine, job_id):
    write_metric_rows(engine, job_id, [loss(1), loss(2), loss(3)])
    first = read_metrics(engine, job_id)
    write_metric_rows(engine, job_id, [loss(4), loss(5)])
    new = read_metrics(engine, job_id, after_id=first[-1].id)
    assert [m.step for m in new] == [4, 5]
    assert read_metrics(engine, job_id, after_id=new[-1].id) == []


def test_delete_metrics_after_keeps_rows_up_to_the_checkpoint(engine, job_id):
    write_metric_rows(engine, job_id, [loss(step, name=name) for step in range(1, 6) for name in ("loss", "lr")])
    assert delete_metrics_after(engine, job_id, step=3) == 4
    assert steps(engine, job_id) == [1, 1, 2, 2, 3, 3]


def test_writer_flushes_by_count(engine, job_id):
    with MetricWriter(engine, job_id, max_rows=3, max_delay_s=60) as writer:
        writer.add([loss(1), loss(2)])
        assert steps(engine, job_id) == []
        writer.add(loss(3))
        assert steps(engine, job_id) == [1, 2, 3]


def test_writer_flushes_by_time_on_add(engine, job_id):
    with MetricWriter(engine, job_id, max_rows=100, max_delay_s=0.5) as writer:
        writer.flush()  # start the clock now
        writer.add(loss(1))
        time.sleep(0.6)
        writer.add(loss(2))  # due by now: flushes row 1 unless the timer already did
        assert steps(engine, job_id)[:1] == [1]
    assert steps(engine, job_id) == [1, 2]


def test_writer_flushes_by_time_without_another_add(engine, job_id):
    """A slow next step must not hold a point back: the background timer writes it."""
    with MetricWriter(engine, job_id, max_rows=100, max_delay_s=0.2) as writer:
        writer.add(loss(1))
        deadline = time.monotonic() + 5
        while not steps(engine, job_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert steps(engine, job_id) == [1]
        writer.add(loss(2))
    assert steps(engine, job_id) == [1, 2]


def test_writer_flushes_on_close_and_refuses_rows_after(engine, job_id):
    writer = MetricWriter(engine, job_id, max_rows=100, max_delay_s=60)
    writer.add([loss(1), loss(2)])
    assert steps(engine, job_id) == []
    writer.close()
    assert steps(engine, job_id) == [1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        writer.add(loss(3))


def test_writer_refuses_a_bad_row_in_the_caller(engine, job_id):
    with MetricWriter(engine, job_id, max_rows=100, max_delay_s=60) as writer:
        with pytest.raises(ValueError, match="missing keys \\['value'\\]"):
            writer.add({"step": 1, "name": "loss"})
        writer.add(loss(1))
    assert steps(engine, job_id) == [1]


def test_the_worker_writes_the_rows_up_to_a_checkpoint_before_its_file_is_written(engine, job_id):
    """A resume from checkpoint k keeps the rows of steps <= k and does not write them again, so
    they must be in the database on "saving_checkpoint" k: a worker stopped right after the file
    was written lost steps 3 and 4 of a job's curve (the writer's timer had not fired yet)."""

    with MetricWriter(engine, job_id, max_rows=100, max_delay_s=60) as writer:
        record = _EventRecorder(engine, get_job(engine, job_id), writer)
        for step in range(1, 5):
            record({"type": "progress", "step": step, "total_steps": 8, "epoch": 0.0})
            record({"type": "step", "step": step, "epoch": 0.0, "loss": 1.0 / step})
        assert steps(engine, job_id) == [], "nothing is due yet"
        record({"type": "saving_checkpoint", "step": 4})
        assert steps(engine, job_id) == [1, 2, 3, 4]
