"""Latency of a fine-tune job as the UI sees it, with the tiny SAM3, in both broker modes.

Measured per mode (a real worker process, a real broker):
  submit -> first metric row        (target: < 5 s once the model load is taken out)
  model load                        (load_sam3 of the tiny model, timed in this process)
  step -> row                       (first poll that reads the step's loss row - the step's
                                     heartbeat; polled every 20 ms; MetricWriter promises < 1 s)

Run: .venv/bin/python bench/job_bench.py [--redis redis://127.0.0.1:6379/7] [--steps 30]
Prints numbers and ratios to the targets; no pass/fail (style: timings stay out of tests).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.jobs.embedded_worker import stop_worker  # noqa: E402
from app.jobs.lifecycle import FINAL_STATES, get_job, submit_job  # noqa: E402
from app.jobs.metrics import read_metrics  # noqa: E402
from sam3_lora.model import load_sam3  # noqa: E402
from sam3_lora.tiny import save_tiny_sam3  # noqa: E402
from tests.jobs.test_train_task import job_config, launch_worker, new_project, sender  # noqa: E402

FIRST_ROW_TARGET_S = 5.0
STEP_ROW_TARGET_S = 1.0


def model_load_s(tiny_dir: Path) -> float:
    started = time.perf_counter()
    load_sam3(str(tiny_dir), device="cpu")
    return time.perf_counter() - started


def measure(mode: str, redis_url: str, tiny_dir: Path, steps: int, root: Path) -> dict:
    settings, engine, project_id, snapshot = new_project(root / mode / "data", root / mode / "synthetic")
    url = redis_url if mode == "redis" else ""
    worker = launch_worker(settings, url)
    try:
        time.sleep(8)  # let the worker finish starting: the bench times the job, not the worker boot
        submitted = time.time()
        job = submit_job(engine, project_id, job_config(tiny_dir, max_steps=steps, checkpoint_every=0),
                         snapshot, sender(settings, url))
        beats: dict[int, float] = {}  # step -> its heartbeat (the step's end, written by the runner)
        seen: dict[int, float] = {}  # step -> when this poller first read its "loss" row
        first_row_at, last_id = None, 0
        while get_job(engine, job.id).state not in FINAL_STATES:
            row = get_job(engine, job.id)
            if row.step and row.step not in beats:
                beats[row.step] = row.heartbeat_at.replace(tzinfo=timezone.utc).timestamp()
            new_rows = read_metrics(engine, job.id, after_id=last_id)
            if new_rows:
                now = time.time()
                first_row_at = first_row_at or now
                last_id = new_rows[-1].id
                seen.update((r.step, now) for r in new_rows if r.name == "loss" and r.split == "train")
            if time.time() - submitted > 300:
                raise TimeoutError(f"{mode}: job {job.id} did not finish in 300 s")
            time.sleep(0.02)
        done = get_job(engine, job.id)
        lags = [seen[step] - beats[step] for step in seen if step in beats]
        return {"state": done.state, "first_row_s": (first_row_at or float("nan")) - submitted,
                "step_row_median_s": statistics.median(lags) if lags else float("nan"),
                "step_row_max_s": max(lags) if lags else float("nan")}
    finally:
        stop_worker(worker, timeout=15)
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/7", help="Redis URL; '' skips the Redis mode")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        tiny_dir = save_tiny_sam3(root / "tiny")
        load_s = model_load_s(tiny_dir)
        print(f"model load (tiny, in-process): {load_s:.2f} s")
        for mode in (["redis"] if args.redis else []) + ["embedded"]:
            result = measure(mode, args.redis, tiny_dir, args.steps, root)
            first_excl = result["first_row_s"] - load_s
            print(f"{mode:9s} {result['state']}: submit->first row {result['first_row_s']:.2f} s "
                  f"({first_excl:.2f} s without model load; {first_excl / FIRST_ROW_TARGET_S:.2f} x target), "
                  f"step->row median {result['step_row_median_s']:.3f} s, max {result['step_row_max_s']:.3f} s "
                  f"({result['step_row_max_s'] / STEP_ROW_TARGET_S:.2f} x target)")


if __name__ == "__main__":
    main()
